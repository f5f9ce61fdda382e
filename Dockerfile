FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ingestor ./ingestor
COPY timescale ./timescale
RUN pip install --no-cache-dir -e .
ENV SMART_DAIRY_MIGRATIONS_DIR=/app/timescale
ENTRYPOINT ["smart-dairy"]
