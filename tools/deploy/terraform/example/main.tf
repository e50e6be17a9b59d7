# A complete example: the layer (the module one directory up) and a Python function using it.
#   python3 tools/build_layer.py --all-pythons
#   pip install -r tools/deploy/example_function/requirements.txt -t tools/deploy/example_function
#   cd tools/deploy/terraform/example && terraform init && terraform apply -var sentry_dsn=<dsn>

terraform {
  required_providers {
    aws     = { source = "hashicorp/aws", version = ">= 5.0" }
    archive = { source = "hashicorp/archive", version = ">= 2.0" }
  }
}

variable "sentry_dsn" {
  type        = string
  description = "The project's DSN"
}

variable "function_source_dir" {
  type        = string
  description = "The function's code, with sentry-sdk installed into it: pip install -r requirements.txt -t DIR"
  default     = "../../example_function"
}

variable "architecture" {
  type    = string
  default = "arm64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture is x86_64 or arm64."
  }
}

provider "aws" {}

module "sentry_lambda_extension" {
  source    = "../"
  layer_zip = "${path.module}/../../../../dist/sentry-lambda-extension-0.1.0.zip"
}

data "archive_file" "code" {
  type        = "zip"
  source_dir  = "${path.module}/${var.function_source_dir}"
  output_path = "${path.module}/build/function.zip"
}

resource "aws_iam_role" "function" {
  name_prefix = "sentry-ext-example-"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "lambda.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "logs" {
  role       = aws_iam_role.function.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
}

locals {
  # the function's own variables: they stay, the extension's are merged in
  function_variables = {
    LOG_LEVEL = "info"
  }
}

resource "aws_lambda_function" "example" {
  function_name    = "sentry-ext-example"
  role             = aws_iam_role.function.arn
  filename         = data.archive_file.code.output_path
  source_code_hash = data.archive_file.code.output_base64sha256
  handler          = "app.handler"
  runtime          = "python3.12"
  architectures    = [var.architecture]
  memory_size      = 128
  timeout          = 10
  layers           = concat([], [module.sentry_lambda_extension.layer_arn]) # the function's other layers first

  environment {
    variables = merge(local.function_variables, module.sentry_lambda_extension.environment, {
      SENTRY_DSN = var.sentry_dsn
    })
  }
}
