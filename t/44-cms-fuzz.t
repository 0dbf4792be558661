#!/usr/bin/perl
# The Mdm-Signature fast path (ngx_http_mdm_cms.c, the CMS reader, and the
# cached verification of ngx_http_mdm_verify.c) under libFuzzer +
# ASan/UBSan, seeded with signatures of every shape the devices and
# openssl make over the fuzz target's body.
#
#   MDM_FUZZ_RUNS=200000 prove -v t/44-cms-fuzz.t     a longer run
#   MDM_FUZZ_SECS=600 prove -v t/44-cms-fuzz.t        run for 10 minutes

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MdmTest;
use MdmSign qw(sign_der);

my $clang = qx{command -v clang 2>/dev/null};
chomp $clang;
plan skip_all => 'clang not installed' unless $clang;

my $t = MdmTest->new(no_redis => 1);
my $d = $t->dir;
my $root = $t->root;
my $mod = "$root/ngx_http_mdm_module";
my $fz = "$d/cms-fuzz";

my $cmd = "$clang -g -O1 -fsanitize=fuzzer,address,undefined -I$mod -o $fz"
    . " $root/fuzz/cms_fuzz.c $mod/ngx_http_mdm_cms.c"
    . " $mod/ngx_http_mdm_verify.c -lcrypto";
my $out = qx{$cmd 2>&1};
ok !$?, 'fuzz target builds (clang + libclang-rt-14-dev)' or diag $out;

# ---- seeds: the shapes verification accepts and some it refuses --------

$t->make_ca('root', 'Root CA');
my %c = map { $_ => $t->device_cert($_) } qw(dev1 dev2);
$c{inter} = $t->device_cert('inter', ca => 'root', ext => 'ca',
                            cn => 'Intermediate CA');
$c{devi} = $t->device_cert('devi', ca => 'inter');
$t->run_cmd("openssl req -new -newkey rsa:2048 -nodes -keyout $d/devrsa.key"
    . " -subj /CN=devrsa -out $d/devrsa.csr");
$t->run_cmd("openssl x509 -req -in $d/devrsa.csr -CA $d/ca.crt"
    . " -CAkey $d/ca.key -CAcreateserial -days 30 -out $d/devrsa.crt"
    . " -extfile $d/ext.cnf -extensions client");
$c{devrsa} = { cert => "$d/devrsa.crt", key => "$d/devrsa.key" };

# the fuzz CA trusts both the device CA and the root
$t->spew('fuzz-ca.crt', $t->slurp('ca.crt') . $t->slurp('root.crt'));

my $fb = "fuzz body\n";
my %seed = (
    der      => [ $c{dev1} ],
    ber      => [ $c{dev1}, md => 'sha1', ber => 1 ],
    keyid    => [ $c{dev1}, keyid => 1 ],
    noattr   => [ $c{dev1}, noattr => 1 ],
    rsa      => [ $c{devrsa} ],
    rsaber   => [ $c{devrsa}, md => 'sha1', ber => 1 ],
    sha512   => [ $c{dev1}, md => 'sha512' ],
    two      => [ [ $c{dev1}, $c{dev2} ] ],
    inter    => [ $c{devi}, certfile => $c{inter}{cert} ],
    attached => [ $c{dev1}, attached => 1 ],
    nocerts  => [ $c{dev1}, nocerts => 1 ],
);
mkdir "$d/corpus";
for my $n (sort keys %seed) {
    my ($who, %o) = @{ $seed{$n} };
    $t->spew("corpus/$n", sign_der($fb, $who, %o));
}
# an empty indefinite-length SignedData (no certificates, no signer)
my $sd_oid = "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02";
my $data_oid = "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01";
$t->spew('corpus/empty-ber', "\x30\x80$sd_oid\xa0\x80\x30\x80\x02\x01\x01"
    . "\x31\x00\x30\x0b$data_oid\x31\x00" . "\0\0" x 3);

my @big = grep { -s $_ > 8192 } glob "$d/corpus/*";
ok !@big, 'no seed is larger than -max_len=8192' or diag "@big";

# ---- run -----------------------------------------------------------------

my $runs = $ENV{MDM_FUZZ_RUNS} // 20000;
my $limit = $ENV{MDM_FUZZ_SECS} ? "-max_total_time=$ENV{MDM_FUZZ_SECS}"
                                : "-runs=$runs";
$cmd = "cd $d && MDM_FUZZ_CA=$d/fuzz-ca.crt $fz $limit -max_len=8192"
    . ' -timeout=10 -seed=1 -print_final_stats=1 corpus';
$out = qx{$cmd 2>&1};
ok !$?, 'fuzz run finds nothing'
    or diag join "\n", grep { /ERROR|SUMMARY|==\d+==|#\d+/ } split /\n/, $out;
like $out, qr/Done \d+ runs/, 'fuzzer completed its runs';
diag $_ for grep { /^(Done|stat::|#\d+\s+DONE)/ } split /\n/, $out;

done_testing;
