"""The integration fixtures (real RabbitMQ, SeaweedFS S3, unique names per test) for the gateway's fault tests."""

from tests.integration import conftest as integration

# Found by name: the same fixtures as the integration suite, in this folder.
_containers = integration._containers
_docker = integration._docker
amqp = integration.amqp
rabbitmq_url = integration.rabbitmq_url
run_prefix = integration.run_prefix
s3_endpoint = integration.s3_endpoint
s3_service = integration.s3_service
storage = integration.storage
topo = integration.topo
