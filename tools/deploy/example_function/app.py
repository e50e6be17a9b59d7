"""The example function the deploy recipes use: sentry-sdk as usual; the exec wrapper points it at the extension."""

import os

import sentry_sdk
from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

sentry_sdk.init(dsn=os.environ.get("SENTRY_DSN"), integrations=[AwsLambdaIntegration()], traces_sample_rate=1.0)


def handler(event, context):
    sentry_sdk.capture_message("hello from %s" % context.function_name)
    return {"ok": True}
