# tcpecho as a container image: the `deno compile` binary on distroless `cc`.
#
#   docker build -t tcpecho .
#   docker run --rm -p 8080:8080 -p 9090:9090 tcpecho
#
# Needs BuildKit (Docker 23 or newer, or `docker buildx build`): it sets
# BUILDPLATFORM and TARGETARCH, and runs the cache mount below. The build stage
# runs on the build machine's own platform and cross-compiles with `deno
# compile --target`, so `--platform linux/arm64` on an amd64 machine needs no
# emulation to build (release.yml uses QEMU only to smoke-test the arm64 image).
#
# Bases are pinned by tag and digest: the tag says what it is, the digest makes
# it immutable. The digest is of the multi-platform index, so both
# architectures stay pinned. Bump both together.

# denoland/deno:2.9.6, the Deno that CI tests with (setup-deno in ci.yml).
FROM --platform=$BUILDPLATFORM denoland/deno:2.9.6@sha256:2014dc167ece617ef7e7ba40631ac2234c59e75ce693e7cc2dc2602b3c87859d AS build
ARG TARGETARCH
WORKDIR /src
COPY . .
# One compile path for the binaries and the image: `deno task compile` holds
# the permission flags and any other compile option (tools/compile.ts), so none
# is repeated here. It downloads the runtime base (denort) for the target.
RUN --mount=type=cache,target=/deno-dir,sharing=locked \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "error: no compile target for TARGETARCH \"$TARGETARCH\" (amd64 and arm64 are built; is BuildKit on?)" >&2; exit 1 ;; \
    esac \
    && deno task compile --target "$target" \
    && cp "dist/tcpecho-$target" /tcpecho

# glibc, libgcc and CA certificates, no shell, no package manager. The `-gnu`
# targets above link glibc, so `static` would not run them. The `nonroot` tag
# runs as 65532:65532 already; USER below says so by number, which is what
# Kubernetes needs to check `runAsNonRoot`.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
LABEL org.opencontainers.image.title="tcpecho" \
      org.opencontainers.image.description="TCP and UDP echo server, client and load tester" \
      org.opencontainers.image.licenses="MIT"
# Owned by root, so the process cannot replace its own binary.
COPY --from=build /tcpecho /tcpecho
USER 65532:65532
# As in the official Deno image: size V8's heap from the container's memory
# limit (cgroups), not the host's memory, so a pod's memory limit means GC
# pressure before it means an OOM kill.
ENV DENO_USE_CGROUPS=1
# Echo on 8080 (TCP; UDP with `server --udp`), the admin endpoint on 9090.
EXPOSE 8080/tcp 8080/udp 9090/tcp
# Exec form, no shell: the binary is PID 1 and gets SIGTERM itself (`docker
# stop`, pod termination), stops accepting, drains for --shutdown-timeout,
# exits 0. Nothing in it needs a writable root filesystem: TLS files and Unix
# socket paths come from mounted volumes, and the V8 code cache a compiled
# binary keeps in $TMPDIR is best effort (a tmpfs on /tmp lets it work).
# release.yml smoke-tests the image with `--read-only --tmpfs /tmp`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/tcpecho"]
CMD ["server", "--host", "0.0.0.0", "--admin", "0.0.0.0:9090"]
