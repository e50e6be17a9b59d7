#!/bin/sh
# Attach the sentry-lambda-extension layer to an existing function WITHOUT replacing its other
# layers or environment variables: reads the current configuration, merges, and updates it.
#
#   tools/deploy/attach-layer.sh [--dsn DSN] [--no-wrapper] [--dry-run] FUNCTION LAYER_VERSION_ARN
#
# - Layers: the function's layers stay, in their order; an older version of this layer (same ARN
#   up to the version) is replaced in place, otherwise the layer is appended.
# - Environment: every variable stays; SENTRY_DSN is set from --dsn (or $SENTRY_DSN; if neither is
#   given, the function must have it already) and AWS_LAMBDA_EXEC_WRAPPER is set to the layer's exec
#   wrapper, unless --no-wrapper or the function already uses another wrapper (kept, with a warning).
# - The update carries the configuration's RevisionId, so it fails instead of overwriting a change
#   made in between; it is sent as a file (mode 0600), not on the command line, because the
#   environment may hold secrets.
# Needs: the AWS CLI (v1 or v2, with credentials and a region configured) and python3 for the merge.
set -eu

WRAPPER=/opt/sentry-lambda-extension/bin/sentry-lambda-wrapper
AWS_PAGER=""  # AWS CLI v2 would page the output
export AWS_PAGER

usage() {
    sed -n 's|^#   \(tools/deploy/.*\)|usage: \1|p' "$0"
}

die() {
    echo "attach-layer: $*" >&2
    exit 1
}

dsn=${SENTRY_DSN:-}
use_wrapper=1
dry_run=0
while [ $# -gt 0 ]; do
    case $1 in
        --dsn) [ $# -ge 2 ] || die "--dsn needs a value"; dsn=$2; shift 2 ;;
        --dsn=*) dsn=${1#--dsn=}; shift ;;
        --no-wrapper) use_wrapper=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || { usage >&2; exit 2; }
function_name=$1
layer_arn=$2
case $layer_arn in
    arn:*:lambda:*:*:layer:*:[0-9]*) ;;
    *) die "not a layer version ARN (arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION): $layer_arn" ;;
esac
command -v aws >/dev/null 2>&1 || die "the AWS CLI (aws) is not on PATH"
command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH (it merges the configuration)"

umask 077
request=$(mktemp "${TMPDIR:-/tmp}/attach-layer.XXXXXX")
trap 'rm -f "$request"' EXIT HUP INT TERM

aws lambda get-function-configuration --function-name "$function_name" --output json |
    ATTACH_DSN=$dsn python3 -c '
import json, os, sys

function_name, layer_arn, wrapper, use_wrapper, out = sys.argv[1:6]
cfg = json.load(sys.stdin)


def fail(message):
    sys.stderr.write("attach-layer: %s\n" % message)
    sys.exit(1)


if cfg.get("PackageType") == "Image":
    fail("%s is a container image function: layers do not apply, copy the layer into the image instead"
         % function_name)
base = layer_arn.rsplit(":", 1)[0]
before = [layer["Arn"] for layer in cfg.get("Layers") or []]
layers = []
for arn in before:
    arn = layer_arn if arn.rsplit(":", 1)[0] == base else arn
    if arn not in layers:
        layers.append(arn)
if layer_arn not in layers:
    layers.append(layer_arn)
if len(layers) > 5:
    fail("%s would have %d layers; Lambda allows 5" % (function_name, len(layers)))

environment = cfg.get("Environment") or {}
if environment.get("Error"):
    fail("cannot read the environment variables of %s (%s): they would be lost, nothing changed"
         % (function_name, environment["Error"].get("Message") or environment["Error"]))
env = dict(environment.get("Variables") or {})
changed = []
dsn = os.environ.get("ATTACH_DSN", "")
if dsn:
    if env.get("SENTRY_DSN") != dsn:
        changed.append("SENTRY_DSN")
    env["SENTRY_DSN"] = dsn
elif not env.get("SENTRY_DSN"):
    fail("%s has no SENTRY_DSN: pass --dsn DSN (or set SENTRY_DSN)" % function_name)
if use_wrapper == "1":
    current = env.get("AWS_LAMBDA_EXEC_WRAPPER")
    if current and current != wrapper:
        sys.stderr.write("attach-layer: WARNING: keeping AWS_LAMBDA_EXEC_WRAPPER=%s (Lambda runs one wrapper): "
                         "chain the two (see the README, Troubleshooting) or give the SDK the local DSN in code\n"
                         % current)
    elif current != wrapper:
        env["AWS_LAMBDA_EXEC_WRAPPER"] = wrapper
        changed.append("AWS_LAMBDA_EXEC_WRAPPER")

request = {"FunctionName": function_name, "Layers": layers, "Environment": {"Variables": env}}
if cfg.get("RevisionId"):
    request["RevisionId"] = cfg["RevisionId"]
with open(out, "w") as fh:
    json.dump(request, fh)
sys.stderr.write("layers: %s\n     -> %s\nenvironment: %d variable(s), set: %s\n"
                 % (" ".join(before) or "(none)", " ".join(layers), len(env), ", ".join(changed) or "nothing"))
' "$function_name" "$layer_arn" "$WRAPPER" "$use_wrapper" "$request"

if [ "$dry_run" = 1 ]; then
    echo "dry run: $function_name not changed" >&2
    exit 0
fi
aws lambda update-function-configuration --cli-input-json "file://$request" \
    --query 'Layers[].Arn' --output text
aws lambda wait function-updated --function-name "$function_name"
echo "$function_name updated" >&2
