#!/usr/bin/perl
# The device message decoder (ngx_http_mdm_message.c, nginx-free) under
# libFuzzer + ASan/UBSan, seeded with the device captures as XML and binary
# plists and with the hostile shapes of t/19 at their real sizes; the target
# also checks that the pre-scan's bounds hold for whatever libplist builds.
# MDM_FUZZ_RUNS (-1: no limit) and MDM_FUZZ_TIME (seconds, default 45)
# bound the run: MDM_FUZZ_RUNS=-1 MDM_FUZZ_TIME=600 MDM_FUZZ_SEED=0 for ten
# minutes from a random seed.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use File::Temp qw(tempdir);
use MdmTest;
use HostilePlist;

my $root = MdmTest::root();
my $clang = qx{command -v clang 2>/dev/null};
chomp $clang;
plan skip_all => 'clang not installed' unless $clang;

my $d = tempdir('mdm-fuzz-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{KEEP});
my $mod = "$root/ngx_http_mdm_module";
my $fz = "$d/message-fuzz";
my $cmd = "$clang -g -O1 -fsanitize=fuzzer,address,undefined -I$mod -o $fz"
    . " $root/fuzz/message_fuzz.c $mod/ngx_http_mdm_message.c"
    . " $mod/ngx_http_mdm_plist_scan.c"
    . ' $(pkg-config --cflags --libs libplist-2.0)';
my $out = qx{$cmd 2>&1};
ok !$?, 'fuzz target builds (clang + libclang-rt-14-dev)' or diag $out;

# Inputs up to the largest body a device endpoint takes (mdm_max_body
# report=2m) plus the kind byte: above every bound the decoder enforces
# (33 levels, 100,001 elements, the entity work, binary bombs).
my $max_len = 2 * 1024 * 1024 + 1;

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

# The shapes of the attacks in t/19, at and around each bound.
my $A = sub { HostilePlist::authenticate_with('UDID-A', @_) };
my %seeds = (
    'bin-nested-120k' => HostilePlist::bin_nested(120_000),
    'bin-bomb-8x14' => HostilePlist::bin_bomb(8, 14),
    'bin-bomb-22x2' => HostilePlist::bin_bomb(22, 2),
    'bin-cycle' => HostilePlist::bin_cycle(),
    'xml-32' => $A->(HostilePlist::xml_nested(31, open => "<array\n>",
                                              close => "</array\n>")),
    'xml-33' => $A->(HostilePlist::xml_nested(32, open => "<array\t>")),
    'xml-5000' => $A->(HostilePlist::xml_nested(5000)),
    'xml-nl-180k' => $A->(HostilePlist::xml_nested(180_000,
                              open => "<array\n>", close => '')),
    'xml-comment' => $A->(HostilePlist::xml_nested(40,
                              open => '<array><!--</array></dict>-->')),
    'xml-cdata' => $A->(HostilePlist::xml_nested(40,
                      open => '<array><string><![CDATA[</array>]]></string>')),
    'xml-pi' => $A->(HostilePlist::xml_nested(40,
                                         open => '<array><?x </array>?>')),
    'xml-empty-root' => '<plist><dict/><key>a</key>'
        . HostilePlist::xml_nested(32),
    'xml-doctype' => qq{<!DOCTYPE plist [ <!ENTITY x "<dict>"> ]>}
        . $A->('<string>&amp;&#233;</string>'),
    'xml-elements-100k' => HostilePlist::xml_message(MessageType => 'Nope',
        UDID => 'UDID-A', X => '<array>' . ('<true/>' x 99_992) . '</array>'),
    'xml-elements-100k1' => HostilePlist::xml_message(MessageType => 'Nope',
        UDID => 'UDID-A', X => '<array>' . ('<true/>' x 99_993) . '</array>'),
    'xml-entities' => $A->('<string>' . ('&lt;' x 4000) . ('x' x 100_000)
                           . '</string>'),
    'xml-entities-over' => $A->('<string>' . ('&lt;' x 5000)
                                . ('x' x 1_000_000) . '</string>'),
    'xml-device-name' => $A->('<string/>', DeviceName => 'a' . ('é' x 300)),
);
for my $name (sort keys %seeds) {
    MdmTest->spew("$d/corpus/$name", "\x00$seeds{$name}");
    MdmTest->spew("$d/corpus/$name-r", "\x01$seeds{$name}");
}
my @big = grep { -s $_ > $max_len } glob "$d/corpus/*";
ok !@big, "no seed is larger than -max_len=$max_len" or diag "@big";

my $runs = $ENV{MDM_FUZZ_RUNS} // 20000;
my $secs = $ENV{MDM_FUZZ_TIME} // 45;
# A fixed seed makes the CI run reproducible; long runs pass their own.
# The unit timeout is for hangs: ASan's copying realloc makes libplist's
# array growth ~13x slower than in nginx (100,000 elements: 1.5 s against
# 0.12 s), and a loaded two-core CI machine slows that again.
my $seed = $ENV{MDM_FUZZ_SEED} // 1;
my $args = "-runs=$runs -max_total_time=$secs -max_len=$max_len"
    . " -seed=$seed -timeout=60 -rss_limit_mb=4096";
$out = qx{cd $d && ASAN_OPTIONS=malloc_context_size=2 $fz $args corpus 2>&1};
my ($why) = $out =~ /^((?:==\d+==ERROR|ALARM|SUMMARY|MS:).*)$/m;
ok !$?, "fuzz run ($runs runs, $secs s at most, seed $seed) finds nothing"
    or diag(($why // '') . "\n" . substr($out, -3000));
like $out, qr/Done \d+ runs/, 'fuzzer completed its runs';
my ($done) = $out =~ /^(#\d+\s+DONE .*)$/m;
my ($runs_in) = $out =~ /^(Done \d+ runs in \d+ second.*)$/m;
diag "fuzz: $runs_in; $done" if $done && $runs_in;

done_testing;
