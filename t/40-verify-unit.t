#!/usr/bin/perl

# Unit test of the nginx-free verification library
# (ngx_http_mdm_module/ngx_http_mdm_verify.c): makes a PKI and Mdm-Signature
# values with openssl, builds t/unit/verify_test.c twice (plain and with
# ASan/UBSan), runs both, reports t/unit/verify_bench.c's figures (CPU
# time per request, certificate cache cold and warm), and fuzzes the
# decoders briefly when clang's libFuzzer is available.
#
#   prove -v t/40-verify-unit.t
#   MDM_BENCH_SECS=2 prove -v t/40-verify-unit.t      longer bench loops
#   MDM_BENCH_OLD=old/ngx_http_mdm_verify.c prove -v t/40-verify-unit.t
#                                                      old vs new figures
#   MDM_FUZZ_RUNS=1000000 prove -v t/40-verify-unit.t longer fuzz run

use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use MdmTest;
use MdmSign qw(sign_der mdm_signature escaped_pem rfc9440 is_indefinite
               asn1_text);
use MIME::Base64 qw(encode_base64);
use POSIX qw(strftime);
use Time::Local qw(timegm);

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $root = $t->root;
my $src = "$root/ngx_http_mdm_module/ngx_http_mdm_verify.c"
    . " $root/ngx_http_mdm_module/ngx_http_mdm_cms.c";
my $test_src = "$root/t/unit/verify_test.c";

# ---- PKI -------------------------------------------------------------------

open my $ext, '>>', "$d/ext.cnf" or die;
print $ext <<'EOF';
[clientsan]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectAltName = DNS:dev.example.com, URI:urn:udid:A1B2, email:dev@example.com, IP:127.0.0.1
EOF
close $ext;

sub stamp { strftime('%Y%m%d%H%M%SZ', gmtime(time + $_[0] * 86400)) }

$t->make_ca('ca2', 'Other CA');
$t->make_ca('root', 'Root CA');
my %c;
$c{inter} = $t->device_cert('inter', ca => 'root', ext => 'ca',
                            cn => 'Intermediate CA');
$c{devi} = $t->device_cert('devi', ca => 'inter');
$c{$_} = $t->device_cert($_) for qw(dev1 dev2);
$c{devsan} = $t->device_cert('devsan', ext => 'clientsan', cn => 'UDID-SAN-1');
$c{devother} = $t->device_cert('devother', ca => 'ca2');
$c{devnoclient} = $t->device_cert('devnoclient', ext => 'noclient');
$c{devexpired} = $t->device_cert('devexpired',
    not_before => '20200101000000Z', not_after => '20200201000000Z');
$c{devfuture} = $t->device_cert('devfuture',
    not_before => stamp(10), not_after => stamp(20));
$c{devshort} = $t->device_cert('devshort',
    not_before => stamp(-1), not_after => stamp(5));

# An RSA device key: MD5 can only be tried with RSA (OpenSSL has no
# ecdsa-with-MD5).
$t->run_cmd("openssl req -new -newkey rsa:2048 -nodes -keyout $d/devrsa.key"
    . " -subj /CN=devrsa -out $d/devrsa.csr");
$t->run_cmd("openssl x509 -req -in $d/devrsa.csr -CA $d/ca.crt"
    . " -CAkey $d/ca.key -CAcreateserial -days 30 -out $d/devrsa.crt"
    . " -extfile $d/ext.cnf -extensions client");
my $rsafp = $t->run_cmd("openssl x509 -in $d/devrsa.crt -noout"
                        . " -fingerprint -sha256");
$rsafp =~ s/.*=//s;
$rsafp =~ s/[:\s]//g;
$c{devrsa} = { cert => "$d/devrsa.crt", key => "$d/devrsa.key",
               sha256 => lc $rsafp };

for my $n (keys %c) {
    $t->spew("$n.sha256", $c{$n}{sha256}) if $c{$n}{sha256};
}

my $enddate = $t->run_cmd("openssl x509 -in $d/dev1.crt -noout -enddate");
my ($mon, $day, $h, $m, $s, $y) =
    $enddate =~ /notAfter=(\w+)\s+(\d+) (\d+):(\d+):(\d+) (\d+) GMT/
    or die "enddate: $enddate";
my %mi = (Jan => 0, Feb => 1, Mar => 2, Apr => 3, May => 4, Jun => 5,
          Jul => 6, Aug => 7, Sep => 8, Oct => 9, Nov => 10, Dec => 11);
$t->spew('dev1.notafter', timegm($s, $m, $h, $day, $mi{$mon}, $y));

# ---- body and signatures ---------------------------------------------------

# A typical check-in body, about 1.5 KB.
my $body = MdmTest::plist(MessageType => 'TokenUpdate',
    Topic => $MdmTest::TOPIC, UDID => '00008030-001A2B3C4D5E6F70',
    Token => { data => 'T' x 32 }, PushMagic => 'B7C4E6A0-5F1D-4F5A-9C1E',
    UnlockToken => { data => 'U' x 600 }, AwaitingConfiguration => \0);
$body .= ' ' x (1500 - length $body) if length $body < 1500;
$t->spew('body.bin', $body);

my %sig = (
    'sha256-der'  => [ $c{dev1} ],
    'sha1-der'    => [ $c{dev1}, md => 'sha1' ],
    'sha512-der'  => [ $c{dev1}, md => 'sha512' ],
    'sha256-ber'  => [ $c{dev1}, ber => 1 ],
    'sha1-ber'    => [ $c{dev1}, md => 'sha1', ber => 1 ],
    'noattr'      => [ $c{dev1}, noattr => 1 ],
    'keyid'       => [ $c{dev1}, keyid => 1 ],
    'rsa-sha256'  => [ $c{devrsa} ],
    'rsa-sha1-ber' => [ $c{devrsa}, md => 'sha1', ber => 1 ],
    'other-ca'    => [ $c{devother} ],
    'expired'     => [ $c{devexpired} ],
    'future'      => [ $c{devfuture} ],
    'noclient'    => [ $c{devnoclient} ],
    'two-signers' => [ [ $c{dev1}, $c{dev2} ] ],
    'nocerts'     => [ $c{dev1}, nocerts => 1 ],
    'md5'         => [ $c{devrsa}, md => 'md5' ],
    'attached'    => [ $c{dev1}, attached => 1 ],
    'inter-embedded' => [ $c{devi}, certfile => $c{inter}{cert} ],
    'inter-bare'  => [ $c{devi} ],
    'short'       => [ $c{devshort} ],
);
my %der;
for my $n (sort keys %sig) {
    my ($who, %o) = @{ $sig{$n} };
    $der{$n} = sign_der($body, $who, %o);
    $t->spew("$n.b64", encode_base64($der{$n}, ''));
}

# Signed attributes changed in place (no length changes): the fast reader
# refuses them before any signature check, or the signature fails.
sub patch_last {
    my ($der, $from, $to) = @_;
    my $i = rindex($der, $from);
    die 'pattern not found' if $i < 0;
    substr($der, $i, length $from) = $to;
    return $der;
}
my $pkcs9 = "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x09";
my $data_oid = "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01";
my $sd = $der{'sha256-der'};
my %patched = (
    'ct-not-data' => patch_last($sd, "${pkcs9}\x03\x31\x0b$data_oid",
        "${pkcs9}\x03\x31\x0b" . substr($data_oid, 0, -1) . "\x02"),
    'no-ct'       => patch_last($sd, "${pkcs9}\x03\x31", "${pkcs9}\x08\x31"),
    'no-md'       => patch_last($sd, "${pkcs9}\x04\x31", "${pkcs9}\x07\x31"),
    'two-md'      => patch_last($sd, "${pkcs9}\x03\x31\x0b$data_oid",
        "${pkcs9}\x04\x31\x0b\x04\x09" . "\0" x 9),
    'sigalg'      => patch_last($sd, "\x2a\x86\x48\xce\x3d\x04\x03\x02",
                                "\x2a\x86\x48\xce\x3d\x04\x03\x09"),
);
# signing time one year later: the signature over the attributes fails
my ($st) = $sd =~ /\Q$pkcs9\E\x05\x31\x0f\x17\x0d(\d\d)/ or die 'no signingTime';
$patched{'attrs-changed'} = patch_last($sd, "${pkcs9}\x05\x31\x0f\x17\x0d$st",
    "${pkcs9}\x05\x31\x0f\x17\x0d" . sprintf('%02d', ($st + 1) % 100));
for my $n (sort keys %patched) {
    $t->spew("$n.b64", encode_base64($patched{$n}, ''));
}
$t->spew('truncated.b64',
         encode_base64(substr($der{'sha256-der'}, 0, 200), ''));
$t->spew('trailing.b64', encode_base64($der{'sha256-der'} . "\0\0", ''));
$t->spew('wrapped.b64', encode_base64($der{'sha256-der'}));
$t->run_cmd("openssl cms -data_create -binary -in $d/body.bin -outform DER"
    . " -out $d/data.der");
$t->spew('not-signeddata.b64', encode_base64($t->slurp('data.der'), ''));

# The helpers make what the C test assumes.
ok(is_indefinite($der{'sha256-ber'}) && is_indefinite($der{'sha1-ber'}),
   'ber => 1 gives indefinite-length BER');
ok(!is_indefinite($der{'sha256-der'}) && !is_indefinite($der{'sha1-der'}),
   'default output is definite-length DER');
like(asn1_text($der{'sha1-der'}), qr/:sha1\s*$/m, 'SHA-1 digest algorithm');
like(asn1_text($der{'sha256-der'}), qr/:sha256\s*$/m,
     'SHA-256 digest algorithm');
ok(index($der{'sha256-der'}, $body) < 0 && index($der{attached}, $body) > 0,
   'detached unless attached => 1');
my $n_signers = () = asn1_text($der{'two-signers'}) =~ /:ecdsa-with-SHA256/g;
ok($n_signers >= 2, 'two-signers has two signatures');

# openssl itself accepts the detached BER form with the body.
for my $n (qw(sha256-ber sha1-ber)) {
    $t->spew("$n.der", $der{$n});
    my $cmd = "openssl cms -verify -binary -inform DER -in $d/$n.der"
        . " -content $d/body.bin -noverify -out /dev/null";
    my $out = qx{$cmd 2>&1};
    ok(!$?, "openssl cms -verify accepts $n") or diag($out);
}

my $mdm_sig = mdm_signature($body, $c{dev1});
unlike($mdm_sig, qr/[\r\n]/, 'Mdm-Signature value is one line');

$t->spew('dev1.escaped', escaped_pem($c{dev1}));
$t->spew('dev1.rfc9440', rfc9440($c{dev1}));
like($t->slurp('dev1.escaped'),
     qr/^-----BEGIN%20CERTIFICATE-----%0A[A-Za-z0-9%]+
        -----END%20CERTIFICATE-----%0A$/x,
     'escaped PEM looks like $ssl_client_escaped_cert');
like($t->slurp('dev1.rfc9440'), qr/^:[A-Za-z0-9+\/]+=*:$/,
     'RFC 9440 value');

# ---- build -----------------------------------------------------------------

my $inc = "-I$root/ngx_http_mdm_module";
my $warn = '-std=gnu99 -Wall -Wextra -Werror -Wpointer-arith';
my $bin = "$d/verify_test";
my $asan = "$d/verify_test_asan";

sub build {
    my ($out, $flags) = @_;
    my $log = qx{cc $warn $flags $inc -o $out $test_src $src -lcrypto 2>&1};
    ok(!$? && -x $out, "build $flags") or diag($log);
}

build($bin, '-O2 -g');
build($asan, '-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined'
             . ' -fno-sanitize-recover=all');

# ---- run -------------------------------------------------------------------

sub run_unit {
    my ($exe, $label, %env) = @_;
    local @ENV{keys %env} = values %env;
    my $out = qx{$exe $d 2>&1};
    my $rc = $? >> 8;
    my ($checks, $done) = (0, 0);
    for my $line (split /\n/, $out) {
        if ($line =~ /^ok - (.*)$/) {
            pass("$label: $1");
            $checks++;
        } elsif ($line =~ /^not ok - (.*?)(?: # (.*))?$/) {
            fail("$label: $1");
            diag($2) if defined $2;
            $checks++;
        } elsif ($line =~ /^done (\d+)$/) {
            $done = $1;
        } else {
            diag("$label: $line");
        }
    }
    is($rc, 0, "$label exits 0");
    ok($checks > 80 && $done == $checks, "$label ran all $checks checks");
    unlike($out, qr/Sanitizer|runtime error|LeakSanitizer/,
           "$label: no sanitizer report");
    return $checks;
}

run_unit($bin, 'unit');
run_unit($asan, 'asan', ASAN_OPTIONS => 'detect_leaks=1:abort_on_error=0',
         UBSAN_OPTIONS => 'print_stacktrace=1');

# ---- bench (figures only, no speed assertions) -----------------------------
# CPU microseconds per request, certificate cache off (cold) and warm.
# MDM_BENCH_OLD=path/to/an/older/ngx_http_mdm_verify.c runs the same
# harness against it too (its own sources only), for a side-by-side.

my $secs = $ENV{MDM_BENCH_SECS} // 0.3;
my $bench_src = "$root/t/unit/verify_bench.c";
my $bench_bin = "$d/verify_bench";
my $blog = qx{cc $warn -O2 -g $inc -o $bench_bin $bench_src $src -lcrypto 2>&1};
ok(!$? && -x $bench_bin, 'bench builds') or diag($blog);
my $bench = qx{$bench_bin $d $secs 2>&1};
my @us = $bench =~ /cold\s+([\d.]+) us\s+warm\s+([\d.]+) us/g;
ok(!$? && @us == 12 && !grep({ $_ <= 0 } @us), 'bench runs') or diag($bench);
diag($_) for grep { /^bench:/ } split /\n/, $bench;

if (my $old = $ENV{MDM_BENCH_OLD}) {
    my $ob = "$d/verify_bench_old";
    $blog = qx{cc -std=gnu99 -O2 -g $inc -o $ob $bench_src $old -lcrypto 2>&1};
    diag("old: $blog") if $?;
    diag("old $_") for grep { /^bench:/ } split /\n/, qx{$ob $d $secs 2>&1};
}

# ---- fuzz smoke run (libFuzzer) --------------------------------------------

SKIP: {
    my $fuzz_src = "$root/fuzz/verify_fuzz.c";
    my $fz = "$d/verify-fuzz";
    my $clang = qx{command -v clang 2>/dev/null};
    chomp $clang;
    skip 'clang not installed', 4 unless $clang && -e $fuzz_src;
    my $cmd = "$clang -g -O1 -fsanitize=fuzzer,address,undefined $inc"
        . " -o $fz $fuzz_src $src -lcrypto";
    my $log = qx{$cmd 2>&1};
    skip "libFuzzer not available: $log", 4 if $?;
    pass('fuzz target builds');

    # Seeds: a selector byte, then the input; signatures over the fuzz
    # target's fixed body, by a device of the CA it is given.
    mkdir "$d/corpus";
    my $fb = "fuzz body\n";
    my %seed = (
        der => sign_der($fb, $c{dev1}),
        ber => sign_der($fb, $c{dev1}, md => 'sha1', ber => 1),
        two => sign_der($fb, [ $c{dev1}, $c{dev2} ]),
        inter => sign_der($fb, $c{devi}, certfile => $c{inter}{cert}),
        other => sign_der($fb, $c{devother}),
    );
    for my $n (sort keys %seed) {
        $t->spew("corpus/S$n", 'S' . encode_base64($seed{$n}, ''));
        $t->spew("corpus/D$n", 'D' . $seed{$n});
    }
    $t->spew('corpus/Fesc', 'F' . $t->slurp('dev1.escaped'));
    $t->spew('corpus/Frfc', 'F' . $t->slurp('dev1.rfc9440'));
    $t->spew('corpus/Fsan', 'F' . rfc9440($c{devsan}));

    my @big = grep { -s $_ > 4096 } glob "$d/corpus/*";
    ok(!@big, 'no seed is larger than -max_len=4096') or diag("@big");

    # MDM_FUZZ_RUNS=-1 MDM_FUZZ_TIME=600 for a long run
    my $runs = $ENV{MDM_FUZZ_RUNS} // 30000;
    my $time = $ENV{MDM_FUZZ_TIME} ? " -max_total_time=$ENV{MDM_FUZZ_TIME}"
                                   : '';
    $cmd = "cd $d && MDM_FUZZ_CA=$d/ca.crt $fz -runs=$runs -max_len=4096"
        . "$time -seed=1 -print_final_stats=1 $d/corpus";
    my $out = qx{$cmd 2>&1};
    ok(!$?, 'fuzz smoke run finds nothing')
        or diag(join "\n", grep { /ERROR|SUMMARY|==\d+==/ }
                split /\n/, $out);
    note($_) for grep { /^(stat::|#\d+\s+DONE)/ } split /\n/, $out;
    like($out, qr/Done \d+ runs/, 'fuzzer completed its runs');
}

done_testing;
