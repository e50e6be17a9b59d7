#!/bin/sh
# Publish the layer zip as a new layer version, in one or more regions; prints each version's ARN.
#
#   tools/deploy/publish-layer.sh [--layer-name NAME] [--region REGION]... ZIP
#
# One zip serves x86_64 and arm64 (pure Python) and every Python runtime from 3.9 on. A Node.js
# function may use it too (compatible runtimes only filter the console's list): there the extension
# needs a Python (SENTRY_EXT_PYTHON) or it stays inert, see the README.
# Needs: the AWS CLI (v1 or v2) with credentials; the region from --region or the CLI's configuration.
set -eu

RUNTIMES="python3.9 python3.10 python3.11 python3.12 python3.13 python3.14"
AWS_PAGER=""  # AWS CLI v2 would page the output
export AWS_PAGER

usage() {
    sed -n 's|^#   \(tools/deploy/.*\)|usage: \1|p' "$0"
}

name=sentry-lambda-extension
regions=
while [ $# -gt 0 ]; do
    case $1 in
        --layer-name) [ $# -ge 2 ] || { usage >&2; exit 2; }; name=$2; shift 2 ;;
        --region) [ $# -ge 2 ] || { usage >&2; exit 2; }; regions="$regions $2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || { usage >&2; exit 2; }
zip=$1
[ -f "$zip" ] || { echo "publish-layer: no such file: $zip (build it: python3 tools/build_layer.py)" >&2; exit 1; }
command -v aws >/dev/null 2>&1 || { echo "publish-layer: the AWS CLI (aws) is not on PATH" >&2; exit 1; }
version=$(basename "$zip" .zip)

publish() {
    # $1: "--region REGION" or nothing (word splitting intended)
    # shellcheck disable=SC2086
    aws lambda publish-layer-version $1 --layer-name "$name" --zip-file "fileb://$zip" \
        --description "$version" --license-info MIT \
        --compatible-architectures x86_64 arm64 \
        --compatible-runtimes $RUNTIMES \
        --query LayerVersionArn --output text
}

if [ -z "$regions" ]; then
    publish ""
else
    for region in $regions; do
        publish "--region $region"
    done
fi
