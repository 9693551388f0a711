#!/usr/bin/env bash
# docs/studies/value_norm.md: value norm (lmplay normv1_0, the plugin's default variant) against
# the baseline, at the protocol of claim.sh (a five-point lr tune of both arms at 0.5M tokens,
# then each at its pick for 5M tokens, seeds 1-3, compared on the test split).
#
#   bash docs/studies/value_norm.sh     # after cargo build --release --workspace
exec bash "$(dirname "$0")/claim.sh" value_norm "$@"
