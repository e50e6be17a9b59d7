"""AWS CDK (Python): the sentry-lambda-extension layer, and functions that use it.

    python3 tools/build_layer.py --all-pythons           # -> dist/sentry-lambda-extension-0.1.0.zip
    pip install aws-cdk-lib constructs                   # and the CDK CLI: npm install -g aws-cdk
    cd tools/deploy/cdk && cdk deploy -c sentry_dsn=<dsn> [-c layer_zip=PATH] [-c architecture=x86_64]

``use_sentry_extension`` is the part to copy into your own stacks: it *adds* the layer and the two
variables to a function (``add_layers``/``add_environment``), so the function's other layers and
variables stay as they are. The example function's code must contain sentry-sdk
(``pip install -r ../example_function/requirements.txt -t ../example_function``), or use
``aws_cdk.aws_lambda_python_alpha.PythonFunction``, which installs requirements.txt while bundling.
"""

from __future__ import annotations

import os
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

HERE = Path(__file__).resolve().parent
DEFAULT_LAYER_ZIP = HERE.parent.parent.parent / "dist" / "sentry-lambda-extension-0.1.0.zip"
WRAPPER = "/opt/sentry-lambda-extension/bin/sentry-lambda-wrapper"
PYTHONS = [lambda_.Runtime.PYTHON_3_9, lambda_.Runtime.PYTHON_3_10, lambda_.Runtime.PYTHON_3_11,
           lambda_.Runtime.PYTHON_3_12, lambda_.Runtime.PYTHON_3_13, lambda_.Runtime.PYTHON_3_14]


def sentry_extension_layer(scope: Construct, layer_zip: str) -> lambda_.LayerVersion:
    """The layer from the built zip (a .zip asset is uploaded as it is, file modes included)."""
    return lambda_.LayerVersion(
        scope, "SentryLambdaExtension",
        layer_version_name="sentry-lambda-extension",
        description="Relays Sentry SDK traffic and flushes it before every freeze (%s)" % os.path.basename(layer_zip),
        code=lambda_.Code.from_asset(layer_zip),
        compatible_architectures=[lambda_.Architecture.X86_64, lambda_.Architecture.ARM_64],  # pure Python
        compatible_runtimes=PYTHONS,
        license="MIT",
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def use_sentry_extension(function: lambda_.Function, layer: lambda_.ILayerVersion, dsn: str) -> None:
    """Add the layer and the variables to ``function``; nothing of its own configuration is replaced."""
    function.add_layers(layer)
    function.add_environment("SENTRY_DSN", dsn)
    function.add_environment("AWS_LAMBDA_EXEC_WRAPPER", WRAPPER)


class SentryExtensionExample(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, layer_zip: str, dsn: str,
                 architecture: lambda_.Architecture, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)
        layer = sentry_extension_layer(self, layer_zip)
        function = lambda_.Function(
            self, "ExampleFunction",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=architecture,
            handler="app.handler",
            code=lambda_.Code.from_asset(str(HERE.parent / "example_function")),
            memory_size=128,
            timeout=cdk.Duration.seconds(10),
            environment={"LOG_LEVEL": "info"},  # the function's own variables: kept
        )
        use_sentry_extension(function, layer, dsn)
        cdk.CfnOutput(self, "LayerVersionArn", value=layer.layer_version_arn)


def main() -> None:
    app = cdk.App()
    architecture = app.node.try_get_context("architecture") or "arm64"
    SentryExtensionExample(
        app, "SentryLambdaExtensionExample",
        layer_zip=app.node.try_get_context("layer_zip") or str(DEFAULT_LAYER_ZIP),
        dsn=app.node.try_get_context("sentry_dsn") or "https://<key>@o<org>.ingest.sentry.io/<project>",
        architecture=lambda_.Architecture.ARM_64 if architecture == "arm64" else lambda_.Architecture.X86_64,
    )
    app.synth()


if __name__ == "__main__":
    main()
