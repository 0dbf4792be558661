#!/usr/bin/perl
# The module's request paths again, built with AddressSanitizer and UBSan
# (make asan) and preloaded into the stock nginx. A report in error.log, an
# alert or a crashed worker fails the inner test files.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MdmTest;

my $so = MdmTest::root() . '/build/nginx-asan/objs/ngx_http_mdm_module.so';
plan skip_all => 'no ASan build (make asan)' unless -e $so;

for my $f (qw(t/10-checkin.t t/11-bad-input.t t/12-faults.t
                t/13-redis-options.t t/14-redis-tcp.t t/15-redis-errors.t
                t/17-acl.t t/18-secrets.t t/19-hostile-plists.t
                t/20-commands.t t/22-device-facts.t t/23-tenants.t
                t/24-growth.t t/25-api.t t/27-metrics.t
                t/30-identity.t t/58-device-auth.t
                t/28-scep-server.t t/28-scep-flow.t
                t/26-failover-faults.t)) {
    next unless -e MdmTest::root() . "/$f";
    my $out = qx{cd @{[MdmTest::root()]} && MDM_ASAN=1 prove $f 2>&1};
    ok $? == 0, "$f under ASan+UBSan" or diag $out;
}

done_testing;
