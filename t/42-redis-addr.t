#!/usr/bin/perl

# Unit test of the Redis address grammar shared by the module, mdm-apnsd and
# mdmctl (common/mdm_redis_addr.c): builds t/unit/redis_addr_test.c with
# ASan/UBSan and runs its TAP.

use strict;
use warnings;
use FindBin;
use File::Temp qw(tempdir);

my $root = "$FindBin::Bin/..";
my $dir = tempdir('mdm-addr-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $bin = "$dir/redis_addr_test";

system('cc', '-std=gnu99', '-Wall', '-Wextra', '-Werror', '-g', '-O1',
       '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
       "-I$root/common", '-o', $bin, "$root/t/unit/redis_addr_test.c",
       "$root/common/mdm_redis_addr.c") == 0
    or do { print "1..1\nnot ok 1 - build\n"; exit 1 };

exec $bin or die "exec: $!";
