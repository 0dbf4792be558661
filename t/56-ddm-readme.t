#!/usr/bin/perl
# The README's DDM worked example (an OS update, end to end), run as
# written against a test stack laid out like the dev stack: mdmctl ddm for
# the admin side, curl as the device.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use MdmTest;

my $t = MdmTest->new;
$t->start_nginx($t->conf);
my $redis = $t->redis;
my $d = $t->dir;
my $udid = 'DEVSTACK-0001-4B8E-9C2A-5F1D3E7A6B90';

# the dev stack's layout, pointing at this stack
mkdir "$d/dev";
mkdir "$d/dev/pki";
mkdir "$d/mdmctl";
my $c = $t->device_cert($udid);
symlink "$d/ca.crt", "$d/dev/pki/ca.crt" or die;
symlink $c->{cert}, "$d/dev/pki/$udid.crt" or die;
symlink $c->{key}, "$d/dev/pki/$udid.key" or die;
symlink "$d/redis.sock", "$d/dev/redis.sock" or die;
symlink "$d/access.log", "$d/dev/access.log" or die;
symlink MdmTest::root() . '/mdmctl/mdmctl', "$d/mdmctl/mdmctl" or die;
$t->enroll($udid, $udid);

my $readme = $t->slurp(MdmTest::root() . '/README.md');
my ($block) = $readme =~ m{<!-- ddm-example -->\n```sh\n(.*?)```\n}s;
ok $block, 'the example is in the README' or BAIL_OUT('no example');
my $port = $t->port('https');
my $n = ($block =~ s{https://localhost:8443/}{https://localhost:$port/}g);
ok $n >= 3, 'it talks to the stack';
$t->spew('example.sh', "set -eu\ncd $d\n$block");
my $out = `bash $d/example.sh 2>&1`;
is $?, 0, 'the example runs without an error' or diag $out;

like $out, qr/"SyncTokens":\{"DeclarationsToken":"[0-9a-f]{40}","Timestamp":"/,
    'tokens';
my ($items) = $out =~ /^(\{"Declarations".*)$/m;
my $it = decode_json($items // '{}');
is scalar(@{ $it->{Declarations}{Configurations} // [] }), 2,
    'items: two configurations';
is scalar(@{ $it->{Declarations}{Activations} // [] }), 1, 'one activation';
like $out, qr/^\{"Identifier":"com\.example\.os\.26-2","Payload":\{"TargetLocalDateTime"/m,
    'the software-update declaration fetched';
like $out, qr/softwareupdate\.install-state.*downloading/,
    'mdmctl ddm status shows the install state';
is $redis->hget("mdm:{$udid}:ditems:$udid", 'softwareupdate.install-state'),
    '"downloading"', 'stored';
my @log = grep { /^\d+ DeclarativeManagement/ }
          split /\n/, $t->slurp('access.log');
is scalar(@log), 6, 'six DDM requests in the access log';
ok !(grep { !/^200 / } @log), 'all 200';
like join("\n", @log), qr/ddm=tokens.*ddm=declaration-items.*ddm=status/s,
    'the sync, as the access log shows it';
is $redis->zcard("mdm:{$udid}:q:$udid"), 0, 'the command was acknowledged';

$t->finish;
done_testing;
