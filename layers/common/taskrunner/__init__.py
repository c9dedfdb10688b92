"""The task runner's shared runtime: models, domain rules, data access and observability.

Shipped to Lambda as the `CommonLayer`; importable locally with `layers/common` on `sys.path`.
"""
