#!/usr/bin/perl
# The SCEP message reader (ngx_http_mdm_scep_msg.c) under libFuzzer +
# ASan/UBSan, seeded with real PKIOperations (PKCSReq, RenewalReq, AES and
# DES envelopes, RSA 2048 and 4096, one not encrypted to the CA), the way
# t/44-cms-fuzz.t runs the CMS reader.
#
#   MDM_FUZZ_RUNS=200000 prove -v t/28-scep-fuzz.t     a longer run
#   MDM_FUZZ_SECS=600 prove -v t/28-scep-fuzz.t        run for 10 minutes

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MdmTest;

my $clang = qx{command -v clang 2>/dev/null};
chomp $clang;
plan skip_all => 'clang not installed' unless $clang;

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $root = $t->root;
my $mod = "$root/ngx_http_mdm_module";
my $fz = "$d/scep-fuzz";

my $cmd = "$clang -g -O1 -fsanitize=fuzzer,address,undefined -I$mod -o $fz"
    . " $root/fuzz/scep_fuzz.c $mod/ngx_http_mdm_scep_msg.c -lcrypto";
my $out = qx{$cmd 2>&1};
ok !$?, 'fuzz target builds' or diag $out;
$out = qx{cc -O1 -o $d/scep_req $root/t/unit/scep_req.c -lcrypto 2>&1};
ok !$?, 'request builder builds' or diag $out;

# ---- seeds -----------------------------------------------------------------
$t->run_cmd("openssl req -x509 -new -newkey rsa:2048 -nodes -keyout $d/ca.key"
    . " -subj /CN=SCEP-CA -days 2 -out $d/scep-ca.crt");
mkdir "$d/corpus";
my $i = 0;
for my $s ([2048, 'aes-128-cbc', 19], [2048, 'des-cbc', 19],
           [4096, 'aes-256-cbc', 17], [2048, 'des-ede3-cbc', 19],
           [2048, 'aes-128-cbc', 19, 'self']) {
    my ($bits, $cipher, $type, $to) = @$s;
    $i++;
    $t->spew("r$i.cnf", "[req]\nprompt = no\ndistinguished_name = dn\n"
             . "attributes = a\n[a]\nchallengePassword = seed-challenge-$i\n"
             . "[dn]\nCN = seed$i\n");
    $t->run_cmd("openssl req -new -newkey rsa:$bits -nodes -keyout $d/r$i.key"
        . " -config $d/r$i.cnf -outform DER -out $d/r$i.csr");
    $t->run_cmd("openssl req -x509 -new -key $d/r$i.key -subj /CN=seed$i"
        . " -days 1 -out $d/r$i.crt");
    my $rcpt = $to ? "$d/r$i.crt" : "$d/scep-ca.crt";
    $t->run_cmd("$d/scep_req build $type $cipher $rcpt $d/r$i.crt $d/r$i.key"
        . " $d/r$i.csr " . ('0f' x 16) . " seed$i $d/corpus/seed$i");
}

# ---- run -------------------------------------------------------------------
my $runs = $ENV{MDM_FUZZ_RUNS} // 20000;
my $limit = $ENV{MDM_FUZZ_SECS} ? "-max_total_time=$ENV{MDM_FUZZ_SECS}"
                                : "-runs=$runs";
$cmd = "cd $d && MDM_FUZZ_SCEP_CA=$d/scep-ca.crt MDM_FUZZ_SCEP_KEY=$d/ca.key"
    . " $fz $limit -max_len=16384 -timeout=20 -seed=1 -print_final_stats=1"
    . ' corpus';
$out = qx{$cmd 2>&1};
ok !$?, 'fuzz run finds nothing'
    or diag join "\n", grep { /ERROR|SUMMARY|==\d+==|#\d+/ } split /\n/, $out;
like $out, qr/Done \d+ runs/, 'fuzzer completed its runs';
diag $_ for grep { /^(Done|stat::)/ } split /\n/, $out;

done_testing;
