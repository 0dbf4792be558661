# Build, test, run and benchmark the MDM module and its companions.
#
#   make run     install what is missing, build, start the dev stack
#   make test    install what is missing, build, run every test
#   make bench   benchmark table, rows explained in bench/README.md

SHELL      := /bin/bash
REPO       := $(CURDIR)
BUILD      := $(REPO)/build
NGX_SRC    := /usr/share/nginx/src
MODULE     := $(BUILD)/nginx/objs/ngx_http_mdm_module.so
MODULE_ASAN := $(BUILD)/nginx-asan/objs/ngx_http_mdm_module.so
MODULE_SRCS := $(wildcard ngx_http_mdm_module/*.c ngx_http_mdm_module/*.h \
                 common/*.c common/*.h) config
TOOLS      := apnsd mdmctl bench

export MDM_MODULE := $(MODULE)

.PHONY: all deps module asan tools test run stop bench clean

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

clean:
	rm -rf $(BUILD)
	@for d in $(TOOLS); do [ -f $$d/Makefile ] && $(MAKE) -C $$d clean; done; true
