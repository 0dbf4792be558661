#!/usr/bin/perl
# mdm-apnsd: several topics with their own certificates (PEM, PKCS#12,
# a watched directory), a rejected certificate stops only its topic,
# certificates reload without losing queued pushes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use ApnsTest;

my $t = ApnsTest->new;
my $d = $t->dir;
my $bin = $t->bin;

sub fp {
    my $f = shift;
    my $o = $t->run_cmd("openssl x509 -in $f -noout -fingerprint -sha256");
    $o =~ s/.*=//s;
    $o =~ s/\s//g;
    return uc $o;
}

sub pushed { my $n = $t->token_counts; !grep { !$n->{ $t->token_of($_) } } @_ }

my $A = $t->push_cert('topicA');                       # PEM, cert + key in one file
my $B = $t->push_cert('topicB', p12 => 's3cret pw');   # PKCS#12
$t->spew("topicB.p12.pass", "s3cret pw\n");
my $W = $t->push_cert('topicW', ca => 'rogueca');      # APNs does not accept it
mkdir "$d/certs";
my $C = $t->push_cert('topicC');
my $D = $t->push_cert('topicD');
rename $C->{pem}, "$d/certs/c.pem";
$t->spew('certs/README', "not a certificate\n");

# ---- --check: an expired certificate ---------------------------------------------------
my $X = $t->push_cert('expired', expired => 1);
my $out = qx{$bin --check --redis unix:$d/redis.sock --cert $X->{pem} 2>&1};
isnt $?, 0, '--check fails with an expired certificate';
like $out, qr/\Q$X->{topic}\E.*EXPIRED/, '... and says EXPIRED';

$t->start_mock;
my @a = map { "A$_" } 1 .. 20;
my @b = map { "B$_" } 1 .. 20;
my @c = map { "C$_" } 1 .. 5;
my @dd = map { "D$_" } 1 .. 5;
my @w = map { "W$_" } 1 .. 5;
$t->enroll_many($A->{topic}, @a);
$t->enroll_many($B->{topic}, @b);
$t->enroll_many($C->{topic}, @c);
$t->enroll_many($D->{topic}, @dd);
$t->enroll_many($W->{topic}, @w);

my $p = $t->start_apnsd(cert => [$A->{pem}, $B->{p12}, $W->{pem}, $X->{pem}],
                        opts => { 'cert-dir' => "$d/certs", 'stopped-retry' => 0 });

# ---- two topics, two certificates --------------------------------------------------------
$t->produce_many(@a, @b, @c);
ok $t->wait_for(sub { pushed(@a, @b, @c) }, 20), 'pushes for topics A, B and C (cert-dir) sent';
my %uid_of_token = map { $_->{token} => $_->{uid} } $t->requests;
ok !(grep { $uid_of_token{ $t->token_of($_) } ne $A->{topic} } @a),
    'topic A devices pushed over a connection with certificate A';
ok !(grep { $uid_of_token{ $t->token_of($_) } ne $B->{topic} } @b),
    'topic B devices pushed over a connection with certificate B (PKCS#12)';
ok !(grep { $_->{status} != 200 } $t->requests), 'APNs accepted every request (topic = certificate UID)';
ok !(grep { !$t->enr($_)->{push_ms} } @a, @b, @c), 'all recorded';
my %uids = map { $_->{uid} => 1 } $t->sessions;
ok $uids{ $A->{topic} } && $uids{ $B->{topic} } && $uids{ $C->{topic} },
    'separate connections per topic';
like $t->apnsd_log, qr/\[crit\] topic \Q$X->{topic}\E STOPPED: .*CertificateExpired/,
    'expired certificate: its topic is stopped at load';

# ---- a certificate appears in the directory -------------------------------------------------
$t->produce_many(@dd);
ok $t->wait_for(sub { ($t->enr('D1')->{push_error} // '') =~ /^NoCertificate/ }, 10),
    'D push failed: NoCertificate';
ok !(grep { $_->{token} eq $t->token_of('D1') } $t->requests), 'no certificate for D yet';
rename $D->{pem}, "$d/certs/d.pem";
ok $t->wait_for(sub { $t->apnsd_log =~ /topic \Q$D->{topic}\E: certificate \Q$d\E\/certs\/d\.pem loaded/ }, 5),
    'new file in --cert-dir loaded';
$t->produce_many(@dd);
ok $t->wait_for(sub { pushed(@dd) }, 10), 'topic D works';

# ---- rejected certificate: topic stopped, reported, its pushes kept -------------------------------
$t->produce_many(@w);
ok $t->wait_for(sub { $t->apnsd_log =~ /\[crit\] topic \Q$W->{topic}\E STOPPED/ }, 10),
    'topic W stopped';
like $t->apnsd_log, qr/\[crit\] topic \Q$W->{topic}\E STOPPED: push certificate rejected or unusable \(BadCertificate\); certificate \Q$W->{pem}\E/,
    'loud log line names topic, reason and file';
like $t->apnsd_log, qr/\[error\] push id=W\d topic=\Q$W->{topic}\E status=403 reason=BadCertificate/,
    'the failing push is logged with its id';
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') == 5 }, 5), 'the five W pushes stay held';
my @wreq = grep { $_->{uid} && $_->{uid} eq $W->{topic} } $t->requests;
ok @wreq >= 1 && @wreq <= 5, 'W not hammered after the 403 (' . scalar(@wreq) . ' requests)';
like $t->redis->hget('mdm:push:stats', "topic:$W->{topic}"), qr/^stopped BadCertificate \d+$/,
    'mdm:push:stats shows the topic stopped';
my ($tev) = $t->events(type => 'push_topic', topic => $W->{topic}, result => 'stopped');
is $tev->{reason}, 'BadCertificate', 'push_topic event';
is $t->enr('W1')->{push_error}, 'BadCertificate', 'enrollment shows why';
ok !$t->enr('W1')->{push_ms}, 'not pushed';

# the other topics keep working
$t->redis->hdel("mdm:{$_}:enr:$_", 'push_ms') for @a;
truncate "$d/mock.jsonl", 0;
$t->produce_many(@a);
ok $t->wait_for(sub { pushed(@a) }, 10), 'topic A unaffected';
sleep 0.5;
ok !(grep { $_->{uid} && $_->{uid} eq $W->{topic} } $t->requests), 'nothing sent for W meanwhile';

# SIGHUP retries the stopped topic (still rejected)
kill 'HUP', $p;
ok $t->wait_for(sub { 2 <= (() = $t->apnsd_log =~ /topic \Q$W->{topic}\E STOPPED: push certificate rejected/g) }, 10),
    'SIGHUP: the topic is tried again and stopped again';
like $t->apnsd_log, qr/topic \Q$W->{topic}\E resumed \(SIGHUP\)/, 'resume on SIGHUP logged';

# replace W's certificate with a good one (same topic): resumes, the held pushes go out
my $W2 = $t->push_cert('topicW2', topic => $W->{topic});
$t->spew("$W->{pem}.tmp", $t->slurp($W2->{pem}));
rename "$W->{pem}.tmp", $W->{pem};
ok $t->wait_for(sub { pushed(@w) && !(grep { !$t->enr($_)->{push_ms} } @w) }, 15),
    'after the certificate is replaced every held W push is delivered';
like $t->apnsd_log, qr/topic \Q$W->{topic}\E: certificate \Q$W->{pem}\E reloaded/, 'reload logged';
like $t->apnsd_log, qr/topic \Q$W->{topic}\E resumed \(certificate changed\)/, 'resume logged';
like $t->redis->hget('mdm:push:stats', "topic:$W->{topic}"), qr/^active /, 'stats show it active';
is $t->llen('mdm:push:proc:a1'), 0, 'nothing held any more';

# ---- 400 BadTopic / TopicDisallowed: the topic stops like on a 403 ----------------------
# (a fault of the topic, not of the item: every push for it would fail alike)
my $E = $t->push_cert('topicE');
my $F = $t->push_cert('topicF');
my @e = map { "E$_" } 1 .. 5;
my @f = map { "F$_" } 1 .. 5;
$t->enroll_many($E->{topic}, @e);
$t->enroll_many($F->{topic}, @f);
$t->rules({ default => { status => 200 }, tokens => {
    (map { ($t->token_of($_) => { status => 400, reason => 'BadTopic' }) } @e),
    (map { ($t->token_of($_) => { status => 400, reason => 'TopicDisallowed' }) } @f) } });
rename $E->{pem}, "$d/certs/e.pem";
rename $F->{pem}, "$d/certs/f.pem";
ok $t->wait_for(sub { my $l = $t->apnsd_log; $l =~ /topic \Q$E->{topic}\E: certificate .*loaded/
                      && $l =~ /topic \Q$F->{topic}\E: certificate .*loaded/ }, 5),
    'topics E and F loaded from --cert-dir';
truncate "$d/mock.jsonl", 0;
$t->produce_many(@e, @f);
for my $x ([$E, 'BadTopic'], [$F, 'TopicDisallowed']) {
    my ($X, $why) = @$x;
    ok $t->wait_for(sub { $t->apnsd_log =~ /\[crit\] topic \Q$X->{topic}\E STOPPED: .*\($why\)/ }, 10),
        "400 $why: the topic is stopped";
    my $ev;
    $t->wait_for(sub { ($ev) = $t->events(type => 'push_topic', topic => $X->{topic},
                                          result => 'stopped'); $ev }, 5);
    is $ev && $ev->{reason}, $why, "push_topic event says $why";
}
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') == 10 }, 5),
    'the E and F pushes stay held, not failed one by one';
my %ef = map { $_ => 1 } @e, @f;
ok !(grep { $ef{ $_->{id} // '' } } $t->events(type => 'push', result => 'failed')),
    'no E or F push recorded as failed';
ok !(grep { $t->enr($_)->{push_ms} } @e, @f), 'none recorded as pushed';
my $ef = grep { $_->{uid} eq $E->{topic} || $_->{uid} eq $F->{topic} } $t->requests;
ok $ef <= 4, "E and F not hammered ($ef requests for 10 pushes)";
$t->rules({ default => { status => 200 } });

# ---- reload while pushes are in flight: nothing dropped, new certificate used ------------------
$t->stop_mock;
truncate "$d/mock.jsonl", 0;
$t->start_mock(delay => 300);
my $old_fp = fp($A->{cert});
my $A2 = $t->push_cert('topicA2', topic => $A->{topic});
my @r = map { "R$_" } 1 .. 600;
$t->enroll_many($A->{topic}, @r);
$t->produce_many(@r);
ok $t->wait_for(sub { scalar($t->requests) >= 50 }, 10), 'busy';
$t->spew("$A->{pem}.tmp", $t->slurp($A2->{pem}));
rename "$A->{pem}.tmp", $A->{pem};
ok $t->wait_for(sub { pushed(@r) }, 30), 'every push of the batch sent across the reload';
ok $t->wait_for(sub { !(grep { !$t->enr($_)->{push_ms} } @r) }, 10), '... and answered';
my @fps = map { $_->{fp} } grep { $_->{uid} eq $A->{topic} } $t->sessions;
is $fps[0], $old_fp, 'first connection with the old certificate';
is $fps[-1], fp($A2->{cert}), 'connections after the reload use the new certificate';

$t->finish_apnsd(allow => qr/STOPPED|still STOPPED|EXPIRED/);
$t->finish;
done_testing;
