#!/usr/bin/env bash
# Check that the autoscale-ds patches apply to a Megatron-LM or Megatron-DeepSpeed checkout.
#
#   bash patches/check_patches.sh CHECKOUT [megatron-lm|megatron-deepspeed]
#
# Runs `git apply --check` (changes nothing) for every patch of that framework; the framework
# is read off the checkout's layout unless named. A patch whose reverse applies is reported as
# already applied. Exit status: 0 every patch applies or is applied, 1 one does not apply,
# 2 bad arguments.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "check_patches: $*" >&2; exit 2; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 CHECKOUT [megatron-lm|megatron-deepspeed]"
command -v git >/dev/null || die "git is not installed"
[[ -d "$1" ]] || die "$1 is not a directory"
checkout="$(cd "$1" && pwd)"
[[ -f "$checkout/pretrain_gpt.py" ]] ||
    die "$checkout has no pretrain_gpt.py; expected a Megatron-LM or Megatron-DeepSpeed checkout"

kind="${2:-}"
if [[ -z "$kind" ]]; then
    if [[ -f "$checkout/megatron/training.py" ]]; then kind=megatron-deepspeed    # megatron/training.py
    elif [[ -d "$checkout/megatron/training" ]]; then kind=megatron-lm            # megatron/training/
    else die "cannot tell whether $checkout is Megatron-LM or Megatron-DeepSpeed; name it"; fi
fi
[[ "$kind" == megatron-lm || "$kind" == megatron-deepspeed ]] ||
    die "unknown framework '$kind'; expected megatron-lm or megatron-deepspeed"

shopt -s nullglob
patches=("$here/$kind"/*.patch)
[[ ${#patches[@]} -gt 0 ]] || die "no patches in $here/$kind"

# Inside a repository git apply resolves paths from its top level and silently skips files
# outside the current directory: never let it find a repository above the checkout.
export GIT_CEILING_DIRECTORIES="$(dirname "$checkout")"
head="$(git -C "$checkout" rev-parse HEAD 2>/dev/null || echo 'no git HEAD')"
echo "checkout $checkout ($kind, HEAD $head)"

status=0
for patch in "${patches[@]}"; do
    name="$kind/$(basename "$patch")"
    base="$(sed -n 's/^# Commit: *\([0-9a-f]\{40\}\).*/\1/p' "$patch" | head -n 1)"
    [[ "$base" == "$head" ]] && made="made against this HEAD" || made="made against ${base:-?}"
    if out="$(cd "$checkout" && git apply --check "$patch" 2>&1)"; then
        echo "OK      $name applies ($made)"
    elif (cd "$checkout" && git apply --check --reverse "$patch" >/dev/null 2>&1); then
        echo "APPLIED $name is already applied"
    else
        echo "FAIL    $name does not apply ($made):"
        sed 's/^/        /' <<<"$out"
        status=1
    fi
done
exit "$status"
