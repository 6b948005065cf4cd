# The flagstream worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY features features
COPY scoring scoring
COPY sinks sinks
COPY perf perf
RUN pip install --no-cache-dir .
RUN useradd --create-home flagstream && mkdir /data && chown flagstream /data
USER flagstream
EXPOSE 6066
CMD ["flagstream", "worker"]
