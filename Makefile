# rootsmith: `make demo` builds and shows the default recipe, `make test` runs
# every test. Both install what they need first (Debian 12, as root).
# `make install` installs the binary, its inits, completions and the man page.

CARGO       ?= cargo
RECIPE      ?= recipes/debian-netboot.yaml
OUT         ?= out
# Host tools the builds and the tests run.
APT_PACKAGES = mmdebstrap debootstrap squashfs-tools cpio zstd xz-utils tar \
               ca-certificates util-linux debian-archive-keyring \
               make gcc libc6-dev ccache bc bison flex perl dpkg-dev rsync kmod \
               patch libelf-dev libssl-dev qemu-system-x86 ipxe-qemu curl \
               pxelinux syslinux-common umoci skopeo docker-registry busybox-static \
               uidmap binutils systemd-boot-efi ovmf gcc-aarch64-linux-gnu \
               libc6-dev-arm64-cross qemu-user-static binfmt-support arch-test qemu-system-arm \
               openssh-client ipxe osslsigncode sbsigntool openssl python3
SUDO        := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: all deps init build install install-built demo lint test test-slow bench clean

# cargo's output directory (CARGO_TARGET_DIR when set).
TARGET_DIR  ?= $(or $(CARGO_TARGET_DIR),target)
# The initramfs's init, one for each architecture a bundle can have: a static
# executable (glibc's static libc: libc6-dev for amd64; libc6-dev-arm64-cross
# for arm64, linked by aarch64-linux-gnu-gcc from gcc-aarch64-linux-gnu).
INIT_TARGET  = x86_64-unknown-linux-gnu
INIT_BIN    ?= $(TARGET_DIR)/$(INIT_TARGET)/init/rootsmith-init
INIT_TARGET_ARM64 = aarch64-unknown-linux-gnu
INIT_BIN_ARM64 ?= $(TARGET_DIR)/$(INIT_TARGET_ARM64)/init/rootsmith-init
ARM64_LINKER ?= aarch64-linux-gnu-gcc
# The binary `make install` installs.
BIN         ?= $(TARGET_DIR)/release/rootsmith

# Where `make install` puts things: PREFIX/bin/rootsmith, and its inits in
# PREFIX/lib/rootsmith/ (rootsmith-init for amd64, rootsmith-init-arm64),
# where the binary looks for them relative to its own path
# (bin/../lib/rootsmith/), so the install works under any PREFIX and can be
# moved whole. DESTDIR is prepended to every path.
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR       = $(DESTDIR)$(PREFIX)/bin
LIBDIR       = $(DESTDIR)$(PREFIX)/lib/rootsmith
SHAREDIR     = $(DESTDIR)$(PREFIX)/share

all: build

# Install the missing apt packages only, so a second run costs nothing. Kernel
# sources come from apt too, so the package lists must exist.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] || ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  { [ -z "$$missing" ] || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (rustup or apt-get install cargo)"; exit 1; }

# Source paths are remapped so the binary (and so every initramfs) has the
# same bytes wherever the repository is checked out.
INIT_RUSTFLAGS = -C target-feature=+crt-static --remap-path-prefix=$(CURDIR)=rootsmith \
                 --remap-path-prefix=$(or $(CARGO_HOME),$(HOME)/.cargo)=cargo

# Both inits. The arm64 one needs the Rust target (added here, through rustup)
# and the cross linker with its static glibc (`make deps` installs them).
init:
	RUSTFLAGS="$(INIT_RUSTFLAGS)" $(CARGO) build --locked -p rootsmith-init --profile init --target $(INIT_TARGET)
	@command -v $(ARM64_LINKER) >/dev/null || { echo "the arm64 init is linked by $(ARM64_LINKER), which is not installed: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross (or make deps)"; exit 1; }
	@if command -v rustup >/dev/null; then \
	  rustup target list --installed | grep -qx $(INIT_TARGET_ARM64) || rustup target add $(INIT_TARGET_ARM64); \
	else \
	  echo "rustup is not installed, so the Rust target $(INIT_TARGET_ARM64) must come with this toolchain"; \
	fi
	RUSTFLAGS="$(INIT_RUSTFLAGS)" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$(ARM64_LINKER) \
	  $(CARGO) build --locked -p rootsmith-init --profile init --target $(INIT_TARGET_ARM64)

build: init
	$(CARGO) build --release --locked

# Build, then install.
install: build
	$(MAKE) --no-print-directory install-built

# Install what is built (BIN, INIT_BIN and INIT_BIN_ARM64) without building:
# for packagers and the tests, which install their own build.
install-built:
	@test -x $(BIN) || { echo "$(BIN) is not built: run make build (or make install)"; exit 1; }
	@test -f $(INIT_BIN) || { echo "$(INIT_BIN) is not built: run make init (or make install)"; exit 1; }
	@test -f $(INIT_BIN_ARM64) || { echo "$(INIT_BIN_ARM64) is not built: run make init (or make install)"; exit 1; }
	install -d $(BINDIR) $(LIBDIR) $(SHAREDIR)/man/man1 \
	  $(SHAREDIR)/bash-completion/completions $(SHAREDIR)/zsh/site-functions $(SHAREDIR)/fish/vendor_completions.d
	install -m 0755 $(BIN) $(BINDIR)/rootsmith
	install -m 0755 $(INIT_BIN) $(LIBDIR)/rootsmith-init
	install -m 0755 $(INIT_BIN_ARM64) $(LIBDIR)/rootsmith-init-arm64
	$(BIN) completions bash > $(SHAREDIR)/bash-completion/completions/rootsmith
	$(BIN) completions zsh > $(SHAREDIR)/zsh/site-functions/_rootsmith
	$(BIN) completions fish > $(SHAREDIR)/fish/vendor_completions.d/rootsmith.fish
	$(BIN) man --dir $(SHAREDIR)/man/man1

# The checkout may be another user's (`sudo make demo` in a home directory):
# its out/ is shared with that user on purpose, so the build is told so.
demo: deps build
	$(SUDO) env ROOTSMITH_SHARED_DIRS=1 $(BIN) build $(RECIPE) --out $(OUT)
	bundle=$(OUT)/$$(sed -n 's/^name: *//p' $(RECIPE))/$$(sed -n 's/^version: *//p' $(RECIPE)); \
	  $(SUDO) $(BIN) boot-test $$bundle --via http && \
	  echo && echo "The bundle is in $$bundle/; boot it yourself with: $(BIN) qemu $$bundle"

# rustfmt and clippy, as CI runs them (.ci/run): no warning passes.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test: deps init
	$(CARGO) test --locked --workspace

# The tests too slow for CI's hour (a kernel built from source with ccache
# and booted): built only with the slow-tests feature. `make bench` runs them.
test-slow: deps init
	$(CARGO) test --locked --features slow-tests --test kernel

bench: APT_PACKAGES += tftpd-hpa python3-yaml mkosi debos
bench: deps build test-slow
	bench/run.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT)
