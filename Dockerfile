# mcppool: one image for every process (web, worker, beat, migrate); docker-compose.yml picks the
# command. The source stays in /app and is first on the path, so templates/ and examples/ are found
# next to the code (settings resolve them from the package's parent directory).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    MCPPOOL_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, so a code change does not reinstall them: `pip install .` against the
# project metadata and empty packages; the real code in /app wins through PYTHONPATH.
COPY pyproject.toml README.md ./
COPY mcppool/__init__.py mcppool/__init__.py
COPY servers/__init__.py servers/__init__.py
COPY balancing/__init__.py balancing/__init__.py
COPY monitoring/__init__.py monitoring/__init__.py
RUN pip install .

# What stdio MCP servers run (space-separated PyPI names), e.g. mcp-server-time.
ARG EXTRA_PIP_PACKAGES=""
RUN if [ -n "$EXTRA_PIP_PACKAGES" ]; then pip install $EXTRA_PIP_PACKAGES; fi

COPY . .
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin mcppool \
    && mkdir -p /app/var \
    && chown -R mcppool /app/var

USER mcppool
EXPOSE 8000 9808
CMD ["uvicorn", "mcppool.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "on", "--timeout-graceful-shutdown", "10"]
