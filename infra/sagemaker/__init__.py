"""SageMaker: our serving image's ``serve`` contract, model artifacts, endpoints, transform jobs, IAM documents."""
