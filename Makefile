# Build, test, run and benchmark the MDM module and its companions.
#
#   make run     install what is missing, build, start the dev stack
#   make test    install what is missing, build, run every test
#   make bench   benchmark table, rows explained in bench/README.md
#   make deb     Debian packages in build/deb/ (README, "Installing")

SHELL      := /bin/bash
REPO       := $(CURDIR)
BUILD      := $(REPO)/build
NGX_SRC    := /usr/share/nginx/src
MODULE     := $(BUILD)/nginx/objs/ngx_http_mdm_module.so
MODULE_ASAN := $(BUILD)/nginx-asan/objs/ngx_http_mdm_module.so
MODULE_SRCS := $(wildcard ngx_http_mdm_module/*.c ngx_http_mdm_module/*.h \
                 common/*.c common/*.h) config
TOOLS      := apnsd webhookd mdmctl bench

export MDM_MODULE := $(MODULE)

.PHONY: all deps module asan tools test run stop bench clean deb

all: module tools

deps:
	@tools/install-deps

module: $(MODULE)

# nginx-dev ships headers and configure only; configure once per tree.
$(BUILD)/%/Makefile: config
	rm -rf $(BUILD)/$* && mkdir -p $(BUILD) && cp -r $(NGX_SRC) $(BUILD)/$*
	cd $(BUILD)/$* && source ./conf_flags && ./configure \
	    "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(REPO) \
	    --with-cc-opt="$(NGX_CC_OPT_$*)" --with-ld-opt="$(NGX_LD_OPT_$*)" \
	    > configure.log

NGX_CC_OPT_nginx      := -O2 -g
NGX_CC_OPT_nginx-asan := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
NGX_LD_OPT_nginx-asan := -fsanitize=address,undefined

$(MODULE): $(BUILD)/nginx/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(BUILD)/nginx -f objs/Makefile modules

asan: $(MODULE_ASAN)

$(MODULE_ASAN): $(BUILD)/nginx-asan/Makefile $(MODULE_SRCS)
	$(MAKE) -C $(BUILD)/nginx-asan -f objs/Makefile modules

tools:
	@for d in $(TOOLS); do \
	    if [ -f $$d/Makefile ]; then $(MAKE) -C $$d || exit 1; fi; \
	done

test: deps all asan
	prove -r -j2 --timer t/

run: deps all
	tools/dev-stack start

stop:
	tools/dev-stack stop

bench: deps all
	bench/run-bench $(BENCH_ARGS)

# The packages are built from a copy of the tree in build/deb-src (the
# files git knows, or everything but build products without git), so the
# .debs land in build/ and not in the parent directory of the checkout.
DEB_OUT  := $(BUILD)/deb
DEB_SRCS := $(wildcard debian/* debian/source/* ngx_http_mdm_module/* \
              common/* apnsd/* webhookd/* mdmctl/* redis-scripts/*) config \
              conf.example README.md tools/mdm-redis-load

deb: $(DEB_OUT)/.stamp

$(DEB_OUT)/.stamp: $(DEB_SRCS)
	@tools/install-deps
	rm -rf $(BUILD)/deb-src $(DEB_OUT) && mkdir -p $(BUILD)/deb-src/mdm $(DEB_OUT)
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z -co --exclude-standard; \
	else \
	    find . -path ./build -prune -o -path ./.git -prune -o -path ./dev -prune \
	        -o -name '*.o' -o -name node_modules -prune \
	        -o \( -type f -print0 \); \
	fi | tar -c --null -T - -f - | tar -x -C $(BUILD)/deb-src/mdm -f -
	cd $(BUILD)/deb-src/mdm && DEB_BUILD_OPTIONS="parallel=2 $$DEB_BUILD_OPTIONS" \
	    dpkg-buildpackage -us -uc -b > ../build.log 2>&1 \
	    || { tail -40 ../build.log; exit 1; }
	mv $(BUILD)/deb-src/*.deb $(BUILD)/deb-src/*.changes \
	    $(BUILD)/deb-src/*.buildinfo $(DEB_OUT)/
	lintian --fail-on error,warning $(DEB_OUT)/*.changes
	@touch $@
	@ls $(DEB_OUT)/*.deb

clean:
	rm -rf $(BUILD)
	@for d in $(TOOLS); do [ -f $$d/Makefile ] && $(MAKE) -C $$d clean; done; true
