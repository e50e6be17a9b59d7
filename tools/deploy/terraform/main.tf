# Terraform module: the sentry-lambda-extension layer, and what a function needs to use it.
#
#   module "sentry_lambda_extension" {
#     source    = "./path/to/tools/deploy/terraform"
#     layer_zip = "dist/sentry-lambda-extension-0.1.0.zip"   # python3 tools/build_layer.py --all-pythons
#   }
#
# then, in each aws_lambda_function (its other layers and variables stay as they are):
#   layers = concat([/* the function's other layers */], [module.sentry_lambda_extension.layer_arn])
#   environment {
#     variables = merge(local.my_variables, module.sentry_lambda_extension.environment, { SENTRY_DSN = var.sentry_dsn })
#   }
# example/main.tf is a complete configuration using it.

terraform {
  required_version = ">= 1.3"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "layer_zip" {
  type        = string
  description = "Path of the layer zip built by tools/build_layer.py"
}

variable "layer_name" {
  type    = string
  default = "sentry-lambda-extension"
}

variable "compatible_runtimes" {
  type        = list(string)
  description = "Runtimes the layer is listed for (a filter for the console; it does not restrict attaching)"
  default     = ["python3.9", "python3.10", "python3.11", "python3.12", "python3.13", "python3.14"]
}

resource "aws_lambda_layer_version" "this" {
  layer_name               = var.layer_name
  description              = "Relays Sentry SDK traffic and flushes it before every freeze (${basename(var.layer_zip)})"
  filename                 = var.layer_zip
  source_code_hash         = filebase64sha256(var.layer_zip)
  license_info             = "MIT"
  compatible_architectures = ["x86_64", "arm64"] # pure Python: one layer serves both
  compatible_runtimes      = var.compatible_runtimes
  skip_destroy             = true # functions still using an old version keep it
}

output "layer_arn" {
  description = "The layer version's ARN, for a function's layers"
  value       = aws_lambda_layer_version.this.arn
}

output "environment" {
  description = "Variables to merge into a function's environment (SENTRY_DSN is yours to add)"
  value = {
    AWS_LAMBDA_EXEC_WRAPPER = "/opt/sentry-lambda-extension/bin/sentry-lambda-wrapper"
  }
}
