FROM python:3.11-slim
RUN useradd --create-home --uid 10001 rampart
WORKDIR /app
COPY pyproject.toml README.md ./
# The product and the harness its demo and scenarios run; bench/ and tests/ stay out.
COPY router router
COPY guardrails guardrails
COPY rampart rampart
COPY harness harness
RUN pip install --no-cache-dir . && mkdir -p /state && chown rampart /state
USER rampart
ENV RAMPART_STATE_DIR=/state
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
ENTRYPOINT ["rampart", "serve", "--host", "0.0.0.0", "--state-dir", "/state"]
