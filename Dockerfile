# syntax=docker/dockerfile:1
# kbitd container image. Build (from the repository root):
#   docker build -t kbitd:dev .
# Run on a GPU node (NVIDIA Container Toolkit) or without a GPU (the CPU backend is chosen at start):
#   docker run --gpus all -p 50051:50051 -p 9400:9400 -v kbitd-models:/models kbitd:dev
# The config is /etc/kbitd/kbitd.yaml (deploy/docker/kbitd.yaml), the model root volume is /models,
# gRPC listens on 50051 and Prometheus /metrics on 9400. Arguments after the image name are kbitd
# flags (they replace the default `--config /etc/kbitd/kbitd.yaml`, so repeat it when adding flags).
#
# The build stage runs the same steps as CI on its native Debian 12 machine: scripts/setup.sh
# (KBITD_SETUP_PROFILE=build: the compiler and library packages only), then CMake. The CUDA backend
# is built for A100 (sm_80) and H100 (sm_90) plus PTX for newer GPUs; it links the CUDA runtime
# statically and finds the driver at run time, so the image starts on a node without a GPU.

ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN KBITD_SETUP_PROFILE=build bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
ARG CUDA_ARCHITECTURES="80-real;90-real;90-virtual"
# What `kbitd --version` reports: .dockerignore leaves .git out, so the revision comes from the
# REVISION build arg ("unknown" without it); an empty VERSION means the project() version.
ARG VERSION=""
ARG REVISION=""
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKBITD_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
      -DKBITD_VERSION="${VERSION}" -DKBITD_REVISION="${REVISION}" \
 && cmake --build build -j "$(nproc)" --target kbitd kbitctl
# The shared libraries the two binaries need that the runtime image lacks (gRPC, protobuf, Abseil,
# yaml-cpp, prometheus-cpp): copied next to them rather than installing -dev packages at run time.
# glibc stays the base image's; libcuda comes from the node's driver.
RUN mkdir -p /out/bin /out/lib \
 && cp build/server/kbitd build/tools/kbitctl/kbitctl /out/bin/ \
 && ldd /out/bin/kbitd /out/bin/kbitctl | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u \
    | grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda)\.so' \
    | xargs -r cp -L -t /out/lib/

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kbitd" \
      org.opencontainers.image.description="gRPC daemon serving k-bit (bitsandbytes-compatible) quantized LLMs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="README.md#deploy" \
      org.opencontainers.image.base.name="nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}"
# A fixed non-root uid/gid, so a Kubernetes securityContext (runAsUser/fsGroup 10001) matches it.
RUN groupadd --system --gid 10001 kbitd \
 && useradd --system --uid 10001 --gid kbitd --home-dir /nonexistent --shell /usr/sbin/nologin kbitd \
 && mkdir -p /etc/kbitd/secret /etc/kbitd/tls /models \
 && chown kbitd:kbitd /models
COPY --from=build /out/lib/ /opt/kbitd/lib/
COPY --from=build /out/bin/ /usr/local/bin/
COPY deploy/docker/kbitd.yaml /etc/kbitd/kbitd.yaml
COPY --chown=kbitd:kbitd models/default /models/default
ENV LD_LIBRARY_PATH=/opt/kbitd/lib:${LD_LIBRARY_PATH} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
VOLUME ["/models"]
EXPOSE 50051 9400
# gRPC health protocol (grpc.health.v1, overall service) through our own client. It assumes the
# default listen port; a config that moves it needs `--health-cmd` at `docker run` too.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/usr/local/bin/kbitctl", "--address=127.0.0.1:50051", "health"]
ENTRYPOINT ["/usr/local/bin/kbitd"]
CMD ["--config", "/etc/kbitd/kbitd.yaml"]
