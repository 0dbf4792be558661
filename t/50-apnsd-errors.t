#!/usr/bin/perl
# mdm-apnsd: what each APNs answer does to the enrollment, the retries and
# the event stream.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use ApnsTest;

my $t = ApnsTest->new;
my $c = $t->push_cert('push1');
my $T = $c->{topic};
my $now = int(time * 1000);

my %tok = map { $_ => $t->token_of($_) } qw(GONE STALE BAD NOTOPIC RATE BUSY OOPS HDR MOVED);
$t->rules({
    default => { status => 200 },
    tokens => {
        $tok{GONE}    => { status => 410, reason => 'Unregistered', timestamp => $now + 5000 },
        $tok{STALE}   => { status => 410, reason => 'Unregistered', timestamp => $now - 3_600_000 },
        $tok{BAD}     => { status => 400, reason => 'BadDeviceToken' },
        $tok{NOTOPIC} => { status => 400, reason => 'DeviceTokenNotForTopic' },
        $tok{RATE}    => [ ({ status => 429, reason => 'TooManyRequests' }) x 3, { status => 200 } ],
        $tok{BUSY}    => [ { status => 503, reason => 'ServiceUnavailable' },
                           { status => 500, reason => 'InternalServerError' }, { status => 200 } ],
        $tok{OOPS}    => { status => 400, reason => 'BadExpirationDate' },
        $tok{MOVED}   => { status => 400, reason => 'BadDeviceToken', delay => 800 },
    },
});
$t->start_mock;
$t->enroll($_, topic => $T, token_update_ms => $now - 60_000) for keys %tok;
# the last TokenUpdate is newer than the 410 timestamp of STALE
$t->redis->hset('mdm:{STALE}:enr:STALE', token_update_ms => $now - 1000);

my $a = $t->start_apnsd(cert => [$c->{pem}],
                        opts => { 'breaker-threshold' => 100 });  # no pause here
$t->produce(qw(GONE STALE BAD NOTOPIC RATE BUSY OOPS));

sub final_events { scalar grep { $_->{result} ne 'retry' } $t->events(type => 'push') }
ok $t->wait_for(sub { final_events() >= 7 }, 20, '7 final outcomes'), 'every push has an outcome';
ok $t->wait_for(sub { $t->llen('mdm:push:proc:a1') == 0 }, 5), 'processing list empty';
sleep 0.5;
my $n = $t->token_counts;

# 410: token dead from the APNs timestamp
my $e = $t->enr('GONE');
is $e->{token_dead_ms}, $now + 5000, '410: token_dead_ms = APNs timestamp';
is $e->{push_error}, 'Unregistered', '410: push_error';
ok $e->{push_error_ms}, '410: push_error_ms';
my ($ev) = $t->events(id => 'GONE');
is $ev->{result}, 'unregistered', '410: event result unregistered';
is $ev->{timestamp}, $now + 5000, '410: event carries the timestamp';
is $ev->{flagged}, 1, '410: event says the token was flagged';
is $n->{ $tok{GONE} }, 1, '410: not retried';

# 410 older than the last TokenUpdate does not kill the new registration
$e = $t->enr('STALE');
ok !$e->{token_dead_ms}, '410 older than token_update_ms: token not marked dead';
is $e->{push_error}, 'Unregistered', '... but the error is recorded';

# 400 BadDeviceToken / DeviceTokenNotForTopic
for my $id (qw(BAD NOTOPIC)) {
    $e = $t->enr($id);
    is $e->{token_bad}, 1, "$id: token_bad = 1";
    like $e->{push_error}, qr/^(BadDeviceToken|DeviceTokenNotForTopic)$/, "$id: push_error";
    is $n->{ $tok{$id} }, 1, "$id: exactly one request, no retry";
    is(($t->events(id => $id))[0]{result}, 'bad_token', "$id: event result bad_token");
}

# other 400: failed, not retried, token untouched
$e = $t->enr('OOPS');
is $e->{push_error}, 'BadExpirationDate', '400 BadExpirationDate recorded';
ok !$e->{token_bad}, '... token not flagged';
is $n->{ $tok{OOPS} }, 1, '... not retried';

# 429 x3 then 200; 503, 500 then 200
is $n->{ $tok{RATE} }, 4, '429 retried until success (4 requests)';
is $n->{ $tok{BUSY} }, 3, '503/500 retried until success (3 requests)';
for my $id (qw(RATE BUSY)) {
    $e = $t->enr($id);
    ok $e->{push_ms}, "$id: push_ms after the retries";
    is $e->{push_error}, '', "$id: push_error cleared by the success";
}
my @retries = map { $_->{reason} } $t->events(id => 'RATE', result => 'retry');
is_deeply \@retries, [('TooManyRequests') x 3], 'a retry event per 429';
is_deeply [map { $_->{attempt} } $t->events(id => 'BUSY')], [1, 2, 3], 'attempts counted';
my @t429 = map { $_->{t} } grep { $_->{token} eq $tok{RATE} } $t->requests;
ok $t429[3] - $t429[0] >= 0.6 * (100 + 200 + 400), 'retries back off exponentially';

my $log = $t->apnsd_log;
like $log, qr/\[warn\] push id=GONE topic=\Q$T\E status=410 reason=Unregistered/,
    'one log line for the 410 with id and reason';
like $log, qr/\[warn\] push id=RATE .*reason=TooManyRequests attempt=1: retry in \d+ms/,
    'one log line per retry';
like $log, qr/\[error\] push id=OOPS .*status=400 reason=BadExpirationDate: not retried/,
    'one log line for the failure';

my $st = $t->stats;
is $st->{'unregistered:Unregistered'}, 2, 'stats: unregistered by reason';
is $st->{'bad_token:BadDeviceToken'}, 1, 'stats: bad token by reason';
is $st->{'retry:TooManyRequests'}, 3, 'stats: retries by reason';
is $st->{'failed:BadExpirationDate'}, 1, 'stats: failed by reason';

# the dead token is skipped ...
my $before = scalar $t->requests;
$t->produce('GONE', 'BAD');
ok $t->wait_for(sub { $t->events(id => 'GONE', result => 'skipped') == 1
                      && $t->events(id => 'BAD', result => 'skipped') == 1 }, 10),
    'dead and bad tokens are skipped';
is((($t->events(id => 'GONE', result => 'skipped'))[0]{reason}), 'token_dead', 'reason token_dead');
is((($t->events(id => 'BAD', result => 'skipped'))[0]{reason}), 'token_bad', 'reason token_bad');
is scalar $t->requests, $before, 'no request for them';

# ... until a TokenUpdate (newer token_update_ms, dead flag cleared) revives it
$t->rules({ default => { status => 200 } });
$t->redis->hset('mdm:{GONE}:enr:GONE', token_update_ms => $now + 10_000);
$t->redis->hdel('mdm:{GONE}:enr:GONE', 'token_dead_ms');
$t->produce('GONE');
ok $t->wait_for(sub { $t->enr('GONE')->{push_ms} }, 10), 'revived token pushed again';
is $t->enr('GONE')->{push_error}, '', 'push_error cleared';

# a token that changed while its push was in flight is not flagged
$t->rules({ default => { status => 200 },
            tokens => { $tok{MOVED} => { status => 400, reason => 'BadDeviceToken', delay => 800 } } });
$t->produce('MOVED');
ok $t->wait_for(sub { $t->token_counts->{ $tok{MOVED} } }, 10), 'push for the old token in flight';
$t->redis->hset('mdm:{MOVED}:enr:MOVED', token => 'ab' x 32, token_update_ms => int(time * 1000));
ok $t->wait_for(sub { $t->events(id => 'MOVED') }, 10), 'answer arrived';
ok !$t->enr('MOVED')->{token_bad}, 'the new token is not flagged by the old answer';

# a key of the wrong type where the enrollment should be
$t->redis->set('mdm:{ODD}:enr:ODD', 'not a hash');
$t->produce('ODD');
ok $t->wait_for(sub { $t->events(id => 'ODD') }, 10), 'damaged enrollment handled';
is(($t->events(id => 'ODD'))[0]{reason}, 'bad_enrollment', '... skipped as bad_enrollment');
is $t->redis->get('mdm:{ODD}:enr:ODD'), 'not a hash', '... and left alone';
like $t->apnsd_log, qr/\[error\] push id=ODD: cannot read the enrollment: WRONGTYPE/, '... logged';

# enrollment whose topic has no certificate
$t->enroll('ALIEN', topic => 'com.apple.mgmt.External.00000000-0000-0000-0000-000000000000');
$t->produce('ALIEN');
ok $t->wait_for(sub { $t->events(id => 'ALIEN') }, 10), 'unknown topic handled';
like $t->enr('ALIEN')->{push_error}, qr/^NoCertificate/, 'push_error NoCertificate';
is $t->token_counts->{ $t->token_of('ALIEN') }, undef, 'nothing sent';

$t->finish_apnsd;
$t->finish;
done_testing;
