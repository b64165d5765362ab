# prescaler operator image: dependencies and the wheel installed into a venv, copied into a clean runtime stage.
#
# BASE_IMAGE is any Debian-like image with python3.11 (and its venv module) on the PATH. The default is the
# public one; hack/build-image.sh passes a Debian bookworm root filesystem it builds from Debian packages, for
# machines that reach a Debian mirror but no image registry. Both stages use the same base, so the venv's
# interpreter link resolves in the runtime stage.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a change to the operator's code reuses this layer. The
# test suites of the large scientific packages are never imported at run time and weigh a lot.
# The optional `ca` secret is a CA bundle for builds behind a TLS-inspecting proxy; it never enters a layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
 && python3 -m venv /opt/venv \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /src/requirements.txt \
 && /opt/venv/bin/pip install -r /src/requirements.txt \
 && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find "$site/pandas" "$site/scipy" "$site/numpy" "$site/statsmodels" "$site/matplotlib" \
      -type d -name tests -prune -exec rm -rf {} +
# The runtime package only: .dockerignore leaves out operator/prescaler_dev, and the wheel excludes it too.
COPY operator/ operator/
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/prescaler-*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="prescaler" \
      org.opencontainers.image.description="Kubernetes operator that scales workloads ahead of forecast traffic peaks" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 prescaler \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin prescaler
COPY --from=build /opt/venv /opt/venv
# The root filesystem is read-only in the cluster: HOME, temporary files (cmdstan's data and output files
# under Prophet, through Python's tempfile) and matplotlib's cache go to /tmp, an emptyDir there.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /tmp
USER 10001:10001
EXPOSE 9090 8081
ENTRYPOINT ["prescaler"]
CMD ["run", "--all-namespaces"]
