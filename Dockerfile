# syntax=docker/dockerfile:1
# prescaler operator image: wheel built in one stage, installed into a venv, copied into a slim runtime.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
# The runtime package only: .dockerignore leaves out operator/prescaler_dev, and the wheel excludes it too.
COPY operator/ operator/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/prescaler-*.whl

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="prescaler" \
      org.opencontainers.image.description="Kubernetes operator that scales workloads ahead of forecast traffic peaks" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 prescaler \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin prescaler
COPY --from=build /opt/venv /opt/venv
# The root filesystem is read-only in the cluster: caches and the forecaster's scratch files go to /tmp.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 9090 8081
ENTRYPOINT ["prescaler"]
CMD ["run", "--all-namespaces"]
