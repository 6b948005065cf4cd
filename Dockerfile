# The flagstream worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flagstream flagstream
COPY features features
COPY scoring scoring
COPY sinks sinks
COPY streams streams
COPY simulation simulation
COPY evaluation evaluation
COPY perf perf
COPY demo demo
RUN pip install --no-cache-dir .
RUN useradd --create-home flagstream && mkdir /data && chown flagstream /data
USER flagstream
EXPOSE 6066
CMD ["flagstream", "worker"]
