"""autoscale-ds: compute-optimal data mixtures for LLM pretraining (AutoScale, Kang et al.).

Importing the package is cheap and pulls in neither torch nor deepspeed: the math
(:mod:`autoscale_ds.fit`, :mod:`autoscale_ds.solve`, :mod:`autoscale_ds.ddo`,
:mod:`autoscale_ds.predict`, :mod:`autoscale_ds.sensitivity`), the file formats
(:mod:`autoscale_ds.runs`, :mod:`autoscale_ds.mixture`) and the exporters
(:mod:`autoscale_ds.export`) need only numpy, scipy and PyYAML.
"""

__version__ = "0.1.0"
