#!/usr/bin/perl
# The device message decoder (ngx_http_mdm_message.c, nginx-free) under
# libFuzzer + ASan/UBSan, seeded with the device captures as XML and binary
# plists. MDM_FUZZ_RUNS sets the length of the run.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use File::Temp qw(tempdir);
use MdmTest;

my $root = MdmTest::root();
my $clang = qx{command -v clang 2>/dev/null};
chomp $clang;
plan skip_all => 'clang not installed' unless $clang;

my $d = tempdir('mdm-fuzz-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{KEEP});
my $mod = "$root/ngx_http_mdm_module";
my $fz = "$d/message-fuzz";
my $cmd = "$clang -g -O1 -fsanitize=fuzzer,address,undefined -I$mod -o $fz"
    . " $root/fuzz/message_fuzz.c $mod/ngx_http_mdm_message.c"
    . ' $(pkg-config --cflags --libs libplist-2.0)';
my $out = qx{$cmd 2>&1};
ok !$?, 'fuzz target builds (clang + libclang-rt-14-dev)' or diag $out;

mkdir "$d/corpus";
my $i = 0;
for my $f (glob "$root/t/data/*.plist") {
    my $xml = MdmTest->slurp($f);
    my $kind = $f =~ /DeviceInformation/ ? "\x01" : "\x00";
    MdmTest->spew("$d/corpus/x$i", $kind . $xml);
    my $bin = qx{plistutil -i $f -f bin -o /dev/stdout};
    MdmTest->spew("$d/corpus/b$i", $kind . $bin) if $bin =~ /^bplist/;
    $i++;
}

# Deep nesting, XML and binary: refused, no stack overflow.
my $deep = '<?xml version="1.0"?><plist version="1.0"><dict><key>A</key>'
    . ('<array>' x 5000) . ('</array>' x 5000) . '</dict></plist>';
MdmTest->spew("$d/corpus/deep-xml", "\x00$deep");
MdmTest->spew("$d/deep.xml", $deep);
my $deepbin = qx{plistutil -i $d/deep.xml -f bin -o /dev/stdout 2>/dev/null};
MdmTest->spew("$d/corpus/deep-bin", "\x00$deepbin") if $deepbin =~ /^bplist/;

my $runs = $ENV{MDM_FUZZ_RUNS} // 50000;
$out = qx{cd $d && $fz -runs=$runs -max_len=8192 -timeout=10 corpus 2>&1};
ok !$?, "fuzz run of $runs inputs finds nothing" or diag substr($out, -3000);
like $out, qr/Done \d+ runs/, 'fuzzer completed its runs';

done_testing;
