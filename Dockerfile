# One image for all four services; compose.yaml picks the service with `command`.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bizmsg ./bizmsg
COPY consent_svc ./consent_svc
COPY delivery_svc ./delivery_svc
COPY billing_svc ./billing_svc
COPY ads_svc ./ads_svc
RUN pip install --no-cache-dir . && useradd --uid 10001 --no-create-home bizmsg \
    && mkdir /data && chown bizmsg /data

ENV BIZMSG_LISTEN_HOST=0.0.0.0 \
    BIZMSG_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
USER bizmsg
EXPOSE 50051 50052 50053 50054
CMD ["bizmsg", "--help"]
