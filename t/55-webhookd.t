#!/usr/bin/perl
# mdm-webhookd against a real HTTP receiver (t/lib/webhook-receiver.js):
# the shape of each topic, field by field, from real check-ins and reports
# through nginx; the HMAC header checked here; a receiver answering 500,
# hanging, answering garbage, refusing connections for a while: every event
# delivered, in order per enrollment; dead-letter after the limit.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use Digest::SHA qw(hmac_sha256_base64);
use Time::HiRes qw(time sleep);
use WebhookTest;

plan skip_all => "build webhookd first (" . WebhookTest::bin() . ")"
    unless -x WebhookTest::bin();

my $t = WebhookTest->new;
my $d = $t->dir;
my $r = $t->redis;
my $SECRET = 'hook-secret-' . int(rand 1e9);
$t->spew('hmac.secret', "$SECRET\n");

$t->start_nginx($t->conf);
$t->start_receiver;
my $w = $t->start_webhookd(opts => { 'hmac-secret-file' => "$d/hmac.secret" });

# --- real device traffic ------------------------------------------------------
my $U = '0000FEED-' . sprintf('%04d', $$ % 10000) . '-4B8E-9C2A-5F1D3E7A6B90';
for my $m ($t->authenticate($U), $t->token_update($U)) {
    is $t->put('/mdm/checkin', $m, cert => $U)->{status}, 200, 'check-in';
}
my $cu = '5B4C6D7E-0000-4000-8000-' . sprintf('%012d', $$);
my $cmd = MdmTest::plist(CommandUUID => $cu,
    Command => { dict => [ RequestType => 'DeviceInformation',
                           Queries => [ 'OSVersion' ] ] });
$t->fcall('mdm_enqueue', [], $cmd, 5, 0, 1, $U);
my $idle = MdmTest::plist(UDID => $U, Status => 'Idle');
my $res = $t->put('/mdm/connect', $idle, cert => $U);
like $res->{body}, qr/$cu/, 'the device got the command';
my $ack = MdmTest::plist(UDID => $U, Status => 'Acknowledged',
    CommandUUID => $cu, QueryResponses => { dict => [ OSVersion => '17.4' ] });
is $t->put('/mdm/connect', $ack, cert => $U)->{status}, 200, 'report';
my $co = MdmTest::plist(MessageType => 'CheckOut', Topic => $MdmTest::TOPIC,
                        UDID => $U);
is $t->put('/mdm/checkin', $co, cert => $U)->{status}, 200, 'CheckOut';

# events: Authenticate, TokenUpdate, Report Idle (next), Report Ack, CheckOut
ok $t->wait_for(sub { $t->received >= 5 }, 15, '5 deliveries'),
    'every event delivered';
my @got = $t->delivered;
is_deeply [ map { $_->{topic} } @got ],
    [ qw(mdm.Authenticate mdm.TokenUpdate mdm.Connect mdm.Connect mdm.CheckOut) ],
    'topics, in order';
my @ev = @{ $r->xrange('mdm:events', '-', '+') };
my %evid = map { $_->[0] => 1 } @ev;

for my $g (@got) {
    my $j = $g->{json};
    my $h = $g->{headers};
    is $h->{'content-type'}, 'application/json; charset=utf-8',
        "$j->{topic}: content type";
    my $mac = hmac_sha256_base64($g->{body}, $SECRET);
    $mac .= '=' while length($mac) % 4;
    is $h->{'x-hmac-signature'}, $mac, "$j->{topic}: X-Hmac-Signature is "
        . 'the base64 HMAC-SHA256 of the body';
    ok $evid{ $j->{event_id} }, "$j->{topic}: event_id is the mdm:events id";
    like $j->{created_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
        "$j->{topic}: created_at RFC 3339";
}
my ($au, $tu, $idl, $ak, $out) = map { $_->{json} } @got;
is_deeply [ sort keys %$au ], [ qw(checkin_event created_at event_id topic) ],
    'Authenticate: top-level fields';
is_deeply [ sort keys %{ $au->{checkin_event} } ], [ qw(raw_payload udid) ],
    'Authenticate: checkin_event fields';
is $au->{checkin_event}{udid}, $U, 'Authenticate: udid';
my $raw = decode_base64($au->{checkin_event}{raw_payload});
like $raw, qr{<key>MessageType</key>\s*<string>Authenticate</string>},
    'Authenticate: raw_payload is the message, as an XML plist';
like $raw, qr{<string>\Q$U\E</string>}, 'Authenticate: raw_payload has the UDID';
is_deeply [ sort keys %{ $tu->{checkin_event} } ],
    [ qw(raw_payload token_update_tally udid) ], 'TokenUpdate: fields';
is $tu->{checkin_event}{token_update_tally}, 1, 'TokenUpdate: tally';
like decode_base64($tu->{checkin_event}{raw_payload}),
    qr{<key>MessageType</key>\s*<string>TokenUpdate</string>.*PushMagic}s,
    'TokenUpdate: raw_payload';
is_deeply [ sort keys %{ $idl->{acknowledge_event} } ],
    [ qw(raw_payload status udid) ], 'Connect (Idle): fields';
is $idl->{acknowledge_event}{status}, 'Idle', 'Connect (Idle): status';
is_deeply [ sort keys %{ $ak->{acknowledge_event} } ],
    [ qw(command_uuid raw_payload status udid) ], 'Connect (report): fields';
is $ak->{acknowledge_event}{status}, 'Acknowledged', 'Connect: status';
is $ak->{acknowledge_event}{command_uuid}, $cu, 'Connect: command_uuid';
is decode_base64($ak->{acknowledge_event}{raw_payload}), $ack,
    'Connect: raw_payload is the report as the device sent it';
is $out->{checkin_event}{udid}, $U, 'CheckOut: udid';
is $out->{checkin_event}{raw_payload}, '', 'CheckOut: no raw message is stored';
is $t->stats->{backlog}, 0, 'backlog empty';
is $t->stats->{delivered}, 5, 'delivered counted';
is scalar(grep { $_->{json}{topic} } $t->hook_log), 5, 'nothing twice';
$t->stop_nginx;

# the other check-in topics, seeded; a user channel; User Enrollment
$r->hset('mdm:{UE-1}:enr:UE-1', type => 'UserEnrollmentDevice');
$t->seed($_, "SEED-1") for qw(SetBootstrapToken GetBootstrapToken);
$t->seed('UserAuthenticate', 'SEED-1:USER-1');
$t->seed('Authenticate', 'UE-1');
$t->seed('push', 'SEED-1', token => 'x');        # not a webhook event
ok $t->wait_for(sub { $t->received >= 9 }, 10), 'seeded topics delivered';
@got = sort { $a->{event_id} cmp $b->{event_id} } ($t->delivered)[5 .. 8];
is_deeply [ map { $_->{topic} } grep { $_->{topic} =~ /Bootstrap/ }
             $t->delivered ],
    [ qw(mdm.SetBootstrapToken mdm.GetBootstrapToken) ],
    'one enrollment in order (the others run in parallel)';
is_deeply [ map { $_->{topic} } @got ], [ qw(mdm.SetBootstrapToken
    mdm.GetBootstrapToken mdm.UserAuthenticate mdm.Authenticate) ],
    'SetBootstrapToken, GetBootstrapToken, UserAuthenticate topics';
is $got[2]{json}{checkin_event}{udid}, 'SEED-1', 'user channel: udid of the device';
is $got[3]{json}{checkin_event}{enrollment_id}, 'UE-1',
    'User Enrollment: enrollment_id, no udid';
ok !exists $got[3]{json}{checkin_event}{udid}, 'User Enrollment: no udid';
sleep 0.2;
is $t->received, 9, 'push events are not delivered';

# --- 500, then 200 ------------------------------------------------------------
my $before = scalar $t->hook_log;
$t->rules({ default => 'ok', next => [ 500, 500, 503 ] });
my $id = $t->seed('Authenticate', 'R500');
ok $t->wait_for(sub { grep { ($_->{event_id} // '') eq $id && $_->{mode} eq 'ok' }
                      $t->hook_log }, 10), '500, 500, 503, then delivered';
my @tries = grep { ($_->{event_id} // '') eq $id } $t->hook_log;
is_deeply [ map { $_->{mode} } @tries ], [ qw(500 500 503 ok) ],
    'retried after each failure';
ok $tries[3]{t} - $tries[2]{t} >= 25, 'with a backoff between attempts';

# --- a hanging receiver: timeout, retried ----------------------------------------
$t->rules({ default => 'ok', next => [ 'hang' ] });
$id = $t->seed('Authenticate', 'HANG');
my $id2 = $t->seed('Authenticate', 'OTHER');
my $t0 = time;
ok $t->wait_for(sub { grep { ($_->{event_id} // '') eq $id2 && $_->{mode} eq 'ok' }
                      $t->hook_log }, 5), 'another enrollment is delivered '
    . 'while one request hangs';
ok time - $t0 < 1.5, 'without waiting for the hanging one';
ok $t->wait_for(sub { grep { ($_->{event_id} // '') eq $id && $_->{mode} eq 'ok' }
                      $t->hook_log }, 10), 'the hanging one is retried after '
    . 'the timeout and delivered';
like $t->webhookd_log, qr/Timeout|timed out/i, 'the timeout is logged';

# --- garbage answers -------------------------------------------------------------
$t->rules({ default => 'ok', next => [ 'garbage', 'close', 'garbage' ] });
$id = $t->seed('Authenticate', 'GARBAGE');
ok $t->wait_for(sub { grep { ($_->{event_id} // '') eq $id && $_->{mode} eq 'ok' }
                      $t->hook_log }, 10), 'garbage, close, garbage, delivered';
is scalar(grep { ($_->{event_id} // '') eq $id } $t->hook_log), 4,
    'four attempts';

# --- receiver down (connection refused), then back: all, in order ----------------
$t->stop_receiver;
my (%want, @order);
for my $i (1 .. 20) {
    for my $dev (map { "DOWN-$_" } 1 .. 5) {
        my $eid = $t->seed($i % 2 ? 'Report' : 'TokenUpdate', $dev,
                           status => 'Idle');
        push @{ $want{$dev} }, $eid;
    }
}
ok $t->wait_for(sub { $t->webhookd_log =~ /receiver failing/ }, 5),
    'connection refused: the deliverer notices';
ok $t->wait_for(sub { $t->stats->{taken} >= 109 }, 5),
    'events are taken into the backlog meanwhile';
sleep 1;                                    # stays down a while
my $mark = scalar $t->hook_log;
$t->start_receiver;
ok $t->wait_for(sub {
        my %seen = map { ($_->{event_id} // '') => 1 } $t->delivered;
        !grep { !$seen{$_} } map { @$_ } values %want }, 20),
    'after the outage every event is delivered';
my %got;
for my $g (($t->hook_log)[$mark .. scalar($t->hook_log) - 1]) {
    next unless $g->{mode} eq 'ok' && $g->{udid} && $g->{udid} =~ /^DOWN-/;
    push @{ $got{ $g->{udid} } }, $g->{event_id};
}
is_deeply \%got, \%want, 'in order per enrollment, each once';
is $t->stats->{backlog}, 0, 'backlog empty';

# --- dead letter after the limit -------------------------------------------------
$t->stop_webhookd($w);
$w = $t->start_webhookd(opts => { 'max-attempts' => 3, 'max-dead' => 5,
                                  'hmac-secret-file' => "$d/hmac.secret" });
$t->rules({ default => 500 });
$id = $t->seed('Authenticate', 'DEAD-1');
$id2 = $t->seed('TokenUpdate', 'DEAD-1');
ok $t->wait_for(sub { $r->llen('mdm:webhook:dead') >= 2 }, 10),
    'both events dead-lettered';
my @dead = map { decode_json($_) } $r->lrange('mdm:webhook:dead', 0, -1);
is $dead[1]{event_id}, $id, 'the older first (newest at the head)';
is $dead[0]{event_id}, $id2, 'then the later one (order kept)';
is $dead[1]{attempts}, 3, 'after max-attempts';
is $dead[1]{error}, 'HTTP 500', 'with the last error';
is $dead[1]{type}, 'Authenticate', 'type';
is $dead[1]{id}, 'DEAD-1', 'enrollment id';
is scalar(grep { ($_->{event_id} // '') eq $id } $t->hook_log), 3,
    'three attempts';
is $t->stats->{dead}, 2, 'counted';
is $t->stats->{backlog}, 0, 'out of the backlog';
my $old = $t->seed('Authenticate', 'OLD-1',
                   ms => int(time * 1000) - 2 * 86400 * 1000);
ok $t->wait_for(sub { $t->stats->{dead} >= 3 }, 10),
    'an event older than max-age (24 h) is dead-lettered';
my $od = decode_json($r->lindex('mdm:webhook:dead', 0));
is $od->{event_id}, $old, '... that one';
is $od->{attempts}, 1, '... at its first failure';
$t->seed('Authenticate', "DEAD-$_") for 2 .. 8;
ok $t->wait_for(sub { $t->stats->{dead} >= 10 }, 10), 'more dead-lettered';
is $r->llen('mdm:webhook:dead'), 5, 'the dead-letter list is bounded (max-dead)';
$t->rules({ default => 'ok' });

is $t->stop_webhookd($w), 0, 'SIGTERM: exits 0';
$t->finish;
done_testing;
