# One image for every quickpay process: shard workers, gateway workers, monitor.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY quickpay ./quickpay
COPY gateway ./gateway
COPY ledger ./ledger
COPY fraud ./fraud
COPY loadtest ./loadtest
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["quickpay"]
