# ember in a container: `docker build -t ember .` (CPU), or with CUDA:
#   docker build --build-arg GPU=cuda -t ember:cuda .
#   docker run --gpus all -e EMBER_NUM_GPU=-1 -p 11434:11434 -v ember-home:/data ember:cuda
#
# Two stages: `build` has the compilers and builds llama-cpp-python (about 8 minutes on CPU), the
# final stage gets only the virtual environment, the default model and a non-root user. Both
# stages share one Python at one path, so the copied venv runs as built.
# Build arguments:
#   GPU       cpu (default) or cuda: which base images and llama.cpp backend
#   MODELS    models pulled into EMBER_HOME at build time (space-separated; "" for none)
#   CMAKE_ARGS  extra llama.cpp CMake flags, added to the backend's own
# Inside, ember serves on 0.0.0.0:11434; EMBER_HOME is /data, a volume. Bound beyond loopback,
# ember asks for API keys (EMBER_AUTH=auto): create one with
#   docker exec <container> ember keys create --name app

ARG GPU=cpu

# ---- base images: the same Python in the build and the final stage -----------------------
FROM python:3.11-slim-bookworm AS build-cpu
ENV EMBER_CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/ember

FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build-cuda
# GGML_NATIVE off: the image runs on other CPUs than the one it was built on. libcuda comes from
# the driver at run time, so the link leaves it undefined.
ENV EMBER_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=on -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake python3 python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/ember

# libgomp: llama.cpp's CPU backend uses OpenMP (the build stage has it from build-essential).
FROM python:3.11-slim-bookworm AS runtime-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS runtime-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# ---- build: the venv with ember and llama-cpp-python, and the models -------------------------
FROM build-${GPU} AS build
ARG CMAKE_ARGS=""
ARG MODELS="smollm2:135m"
ENV PATH=/opt/ember/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN CMAKE_ARGS="$EMBER_CMAKE_ARGS $CMAKE_ARGS" pip install --no-compile . \
 && ember version
# The default model goes into the image's /data: a new named volume starts as a copy of it.
RUN mkdir -p /data \
 && for model in $MODELS; do EMBER_HOME=/data ember pull "$model"; done

# ---- the final image -------------------------------------------------------------------------
FROM runtime-${GPU}
ARG UID=10001
RUN useradd --system --uid "$UID" --home-dir /data --shell /usr/sbin/nologin ember
COPY --from=build /opt/ember /opt/ember
COPY --from=build --chown=ember:ember /data /data
ENV PATH=/opt/ember/bin:$PATH \
    EMBER_HOME=/data \
    EMBER_HOST=0.0.0.0:11434 \
    PYTHONUNBUFFERED=1
USER ember
WORKDIR /data
VOLUME ["/data"]
EXPOSE 11434
# /health answers without an API key. The image has no curl: Python's urllib asks, at the
# address ember's own settings give (EMBER_HOST may have moved it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; from ember.config import Settings; urllib.request.urlopen(Settings().base_url + '/health', timeout=4)"]
ENTRYPOINT ["ember"]
CMD ["serve"]
