# resin-abr decision server. CPU image by default; for a CUDA image:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
# The install steps are the README's set-up (make install), so the image and a fresh clone agree.
ARG BASE_IMAGE=python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"

FROM ${BASE_IMAGE} AS build
ARG TORCH_SPEC
RUN apt-get update && apt-get install -y --no-install-recommends make python3 python3-venv nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make PYTHON=python3 TORCH_SPEC="${TORCH_SPEC}" install

FROM ${BASE_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 abr \
    && mkdir /data && chown abr:abr /data
WORKDIR /app
COPY --from=build --chown=abr:abr /app /app
USER abr
ENV PATH="/app/.venv/bin:${PATH}" \
    ABR_TELEMETRY_DB=/data/telemetry.sqlite
VOLUME ["/data"]
EXPOSE 8333
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8333/healthz', timeout=2)"
CMD ["abr", "serve", "--host", "0.0.0.0", "--port", "8333"]
