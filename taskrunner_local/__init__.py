"""The embedded local stack: the whole task runner on one machine, with no AWS account and no Docker.

moto (server mode) plays AWS; this package supplies what moto does not run: an in-process Lambda runtime,
an HTTP gateway for the HttpApi routes, an EventBridge router to Lambda targets, and a local Fargate agent
that runs ECS tasks as local processes. It is never shipped to Lambda.
"""
