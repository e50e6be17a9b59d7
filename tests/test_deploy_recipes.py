"""The deploy recipes under tools/deploy/: SAM and CloudFormation (YAML structure, cfn-lint when
installed), Terraform (HCL structure with python-hcl2, ``terraform fmt -check`` when installed),
CDK (compiles; synthesised when aws-cdk-lib is importable), Serverless Framework (YAML structure).

Every recipe must declare both architectures and every Lambda Python the build knows, point at the
zip ``tools/build_layer.py`` writes for the current version, and give the function the exec
wrapper without replacing its own layers or variables."""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml

from tools import build_layer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "tools" / "deploy"
SAM = DEPLOY / "sam" / "template.yaml"
CFN = DEPLOY / "cloudformation" / "template.yaml"
TF_MODULE = DEPLOY / "terraform" / "main.tf"
TF_EXAMPLE = DEPLOY / "terraform" / "example" / "main.tf"
CDK_APP = DEPLOY / "cdk" / "app.py"
SERVERLESS = DEPLOY / "serverless" / "serverless.yml"
WRAPPER = "%s/%s/bin/sentry-lambda-wrapper" % (build_layer.OPT, build_layer.LIB)
ARCHITECTURES = ["x86_64", "arm64"]
RUNTIMES = ["python" + v for v in build_layer.LAMBDA_PYTHONS]
LAYER_ZIP = ROOT / "dist" / ("%s-%s.zip" % (build_layer.NAME, build_layer.version()))


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref X -> {"Ref": X}, !GetAtt, !Sub...)."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else "Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn(path: Path) -> Dict[str, Any]:
    with path.open() as fh:
        return yaml.load(fh, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def of_type(template: Dict[str, Any], kind: str) -> Dict[str, Dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def check_function_uses_layer(function: Dict[str, Any], layer_id: str) -> None:
    props = function["Properties"]
    assert {"Ref": layer_id} in props["Layers"]
    variables = props["Environment"]["Variables"]
    assert variables["AWS_LAMBDA_EXEC_WRAPPER"] == WRAPPER and "SENTRY_DSN" in variables


@pytest.mark.parametrize("path, layer_type, function_type", [
    (SAM, "AWS::Serverless::LayerVersion", "AWS::Serverless::Function"),
    (CFN, "AWS::Lambda::LayerVersion", "AWS::Lambda::Function"),
], ids=["sam", "cloudformation"])
def test_sam_and_cloudformation_templates(path: Path, layer_type: str, function_type: str) -> None:
    template = load_cfn(path)
    (layer_id, layer), = of_type(template, layer_type).items()
    props = layer["Properties"]
    assert props["CompatibleArchitectures"] == ARCHITECTURES
    assert props["CompatibleRuntimes"] == RUNTIMES
    assert props["LayerName"] == build_layer.NAME and props["LicenseInfo"] == "MIT"
    if "ContentUri" in props:  # SAM: the built zip, relative to the template
        assert (path.parent / props["ContentUri"]).resolve() == LAYER_ZIP
        code_dir = (path.parent / template["Resources"]["ExampleFunction"]["Properties"]["CodeUri"]).resolve()
        assert (code_dir / "app.py").is_file() and "sentry-sdk" in (code_dir / "requirements.txt").read_text()
    else:
        assert template["Parameters"]["LayerKey"]["Default"] == LAYER_ZIP.name
    (_, function), = of_type(template, function_type).items()
    check_function_uses_layer(function, layer_id)
    assert template["Parameters"]["Architecture"]["AllowedValues"] == ARCHITECTURES


def cfn_lint() -> Optional[str]:
    local = Path(sys.executable).parent / "cfn-lint"
    return str(local) if local.exists() else shutil.which("cfn-lint")


def run_cfn_lint(*templates: Path) -> None:
    """cfn-lint's own resource specifications (shipped with it: no network); errors fail, warnings do not."""
    tool = cfn_lint()
    if tool is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint); the templates' structure is checked above")
    proc = subprocess.run([tool, "--format", "parseable", *map(str, templates)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode & 2 == 0 and proc.returncode < 32, "cfn-lint:\n%s%s" % (proc.stdout, proc.stderr)


def test_templates_pass_cfn_lint() -> None:
    run_cfn_lint(SAM, CFN)


# -- Terraform -------------------------------------------------------------------------------------

def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals (since 7.x): "\"x\"" -> "x"."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def blocks(parsed: Dict[str, Any], kind: str) -> Dict[str, Any]:
    """``{"aws_lambda_layer_version.this": {...}}`` from python-hcl2's list-of-dicts shape."""
    out: Dict[str, Any] = {}
    for entry in parsed.get(kind, []):
        for type_name, body in entry.items():
            if kind in ("resource", "data"):
                for name, attrs in body.items():
                    out["%s.%s" % (unquote(type_name), unquote(name))] = attrs
            else:
                out[unquote(type_name)] = body
    return out


def load_hcl(path: Path) -> Dict[str, Any]:
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is in the test extras (pip install -e .[test])")
    with path.open() as fh:
        return hcl2.load(fh)


def test_terraform_module_and_example() -> None:
    module = load_hcl(TF_MODULE)
    layer = blocks(module, "resource")["aws_lambda_layer_version.this"]
    assert unquote(layer["compatible_architectures"]) == ARCHITECTURES
    assert layer["filename"] == "${var.layer_zip}" and "filebase64sha256(var.layer_zip)" in layer["source_code_hash"]
    variables = blocks(module, "variable")
    assert unquote(variables["compatible_runtimes"]["default"]) == RUNTIMES
    assert layer["compatible_runtimes"] == "${var.compatible_runtimes}"
    outputs = blocks(module, "output")
    assert outputs["layer_arn"]["value"] == "${aws_lambda_layer_version.this.arn}"
    assert unquote(outputs["environment"]["value"]["AWS_LAMBDA_EXEC_WRAPPER"]) == WRAPPER

    example = load_hcl(TF_EXAMPLE)
    (use,) = [body for entry in example["module"] for body in entry.values()]
    assert unquote(use["source"]) == "../"
    zip_path = unquote(use["layer_zip"]).replace("${path.module}", str(TF_EXAMPLE.parent))
    assert Path(os.path.normpath(zip_path)) == LAYER_ZIP
    function = blocks(example, "resource")["aws_lambda_function.example"]
    # the layer is added to the function's own layers, the variables merged into its own
    assert function["layers"].startswith("${concat(") and "module.sentry_lambda_extension.layer_arn" in function["layers"]
    env = function["environment"][0]["variables"]
    assert env.startswith("${merge(local.function_variables, module.sentry_lambda_extension.environment")
    code_dir = unquote(blocks(example, "variable")["function_source_dir"]["default"])
    assert (TF_EXAMPLE.parent / code_dir / "app.py").is_file()


def test_terraform_fmt() -> None:
    """``terraform fmt`` parses HCL itself and needs no provider; ``validate`` would download the AWS
    provider, so it is not run here."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed; the HCL structure is checked with python-hcl2")
    proc = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive", str(DEPLOY / "terraform")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "terraform fmt:\n%s%s" % (proc.stdout, proc.stderr)


# -- CDK -------------------------------------------------------------------------------------------

def cdk_python() -> Optional[str]:
    """An interpreter with aws-cdk-lib: this one, or $CDK_PYTHON (aws-cdk-lib is ~50 MB and needs node)."""
    for python in (sys.executable, os.environ.get("CDK_PYTHON")):
        if python and subprocess.run([python, "-c", "import aws_cdk, constructs"], capture_output=True).returncode == 0:
            return python
    return None


def test_cdk_app_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(CDK_APP), cfile=str(tmp_path / "app.pyc"), doraise=True)
    assert json.loads((CDK_APP.parent / "cdk.json").read_text())["app"] == "python3 app.py"
    source = CDK_APP.read_text()
    for version in build_layer.LAMBDA_PYTHONS:
        assert "Runtime.PYTHON_%s" % version.replace(".", "_") in source
    assert "Architecture.X86_64, lambda_.Architecture.ARM_64" in source
    assert '"dist" / "sentry-lambda-extension-%s.zip"' % build_layer.version() in source


def test_cdk_app_synthesises(tmp_path: Path) -> None:
    python = cdk_python()
    if python is None or shutil.which("node") is None:
        pytest.skip("aws-cdk-lib or node is missing (pip install aws-cdk-lib constructs, or set CDK_PYTHON to an "
                    "interpreter that has them); the app is only compiled")
    layer = build_layer.build(out_dir=tmp_path / "dist", bytecode="none").path
    out = tmp_path / "cdk.out"
    env = dict(os.environ, CDK_OUTDIR=str(out), JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION="1",
               CDK_CONTEXT_JSON=json.dumps({"layer_zip": str(layer), "sentry_dsn": "https://k@o1.ingest.sentry.io/1",
                                            "architecture": "x86_64"}))
    proc = subprocess.run([python, str(CDK_APP)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(CDK_APP.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    template = json.loads((out / "SentryLambdaExtensionExample.template.json").read_text())
    (layer_id, res), = of_type(template, "AWS::Lambda::LayerVersion").items()
    assert res["Properties"]["CompatibleArchitectures"] == ARCHITECTURES
    assert res["Properties"]["CompatibleRuntimes"] == RUNTIMES
    (_, function), = of_type(template, "AWS::Lambda::Function").items()
    check_function_uses_layer(function, layer_id)
    assert function["Properties"]["Environment"]["Variables"]["LOG_LEVEL"] == "info"  # its own variable kept
    assert function["Properties"]["Architectures"] == ["x86_64"]
    # the layer zip is the asset, byte for byte (file modes included)
    asset = out / ("asset." + res["Properties"]["Content"]["S3Key"])
    assert asset.read_bytes() == layer.read_bytes()
    if cfn_lint() is not None:
        run_cfn_lint(out / "SentryLambdaExtensionExample.template.json")


# -- Serverless Framework --------------------------------------------------------------------------

def test_serverless_service() -> None:
    service = yaml.safe_load(SERVERLESS.read_text())
    (key, layer), = service["layers"].items()
    assert layer["compatibleArchitectures"] == ARCHITECTURES and layer["compatibleRuntimes"] == RUNTIMES
    assert (SERVERLESS.parent / layer["package"]["artifact"]).resolve() == LAYER_ZIP
    # Serverless names a layer's CloudFormation resource <Key with a capital>LambdaLayer
    logical_id = key[0].upper() + key[1:] + "LambdaLayer"
    provider = service["provider"]
    assert provider["layers"] == [{"Ref": logical_id}]
    assert provider["environment"]["AWS_LAMBDA_EXEC_WRAPPER"] == WRAPPER
    assert provider["architecture"] in ARCHITECTURES and provider["runtime"] in RUNTIMES
    assert all("layers" not in fn for fn in service["functions"].values())  # they would replace provider.layers


def test_every_recipe_is_tested() -> None:
    recipes = sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*")
                     if p.is_file() and p.suffix in (".yaml", ".yml", ".tf", ".py", ".sh", ".json")
                     and "example_function" not in p.parts and "__pycache__" not in p.parts)
    checked = {SAM, CFN, TF_MODULE, TF_EXAMPLE, CDK_APP, CDK_APP.parent / "cdk.json", SERVERLESS,
               DEPLOY / "attach-layer.sh", DEPLOY / "publish-layer.sh"}
    assert recipes == sorted(p.relative_to(DEPLOY).as_posix() for p in checked)

