#!/usr/bin/perl
# Declarative Device Management, device side: the four endpoints, the token
# rules, scope changes between items and fetch, status storage, the user
# channel, the sync command and its coalescing, the fan-out, and bad input.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use MdmTest;

my $t = MdmTest->new;
$t->start_nginx($t->conf);
my $redis = $t->redis;
my $json = JSON::PP->new->canonical;
my $r;

sub fc { my ($fn, @a) = @_; return $redis->fcall($fn, 0, @a) }
sub fj { return decode_json(fc(@_)) }

# A DeclarativeManagement check-in; returns the response.
sub dm {
    my ($udid, $cert, $ep, %o) = @_;
    my @kv = (MessageType => 'DeclarativeManagement', UDID => $udid,
              Endpoint => $ep);
    push @kv, UserID => $o{user} if $o{user};
    push @kv, Data => { data => $o{data} } if defined $o{data};
    return $t->put('/mdm/checkin', MdmTest::plist(@kv), cert => $cert);
}

sub report {
    my ($udid, $cert, @kv) = @_;
    return $t->put('/mdm/connect', MdmTest::plist(UDID => $udid, @kv),
                   cert => $cert);
}

sub uuid_of { ($_[0]{body} =~ m{<key>CommandUUID</key>\s*<string>([^<]+)})[0] }

sub tokens {
    my ($udid, $cert, %o) = @_;
    my $r = dm($udid, $cert, 'tokens', %o);
    is $r->{status}, 200, 'tokens: 200' or diag $r->{body};
    return decode_json($r->{body})->{SyncTokens};
}

sub items {
    my ($udid, $cert, %o) = @_;
    my $r = dm($udid, $cert, 'declaration-items', %o);
    is $r->{status}, 200, 'declaration-items: 200' or diag $r->{body};
    return decode_json($r->{body});
}

my $su = { Type => 'com.apple.configuration.softwareupdate.enforcement.specific',
           Identifier => 'com.example.su',
           Payload => { TargetOSVersion => '26.1',
                        TargetLocalDateTime => '2026-12-24T18:00:00' } };
my $subs = { Type => 'com.apple.configuration.management.status-subscriptions',
             Identifier => 'com.example.subs',
             Payload => { StatusItems => [
                 map { { Name => $_ } } qw(softwareupdate.install-state
                     softwareupdate.pending-version
                     softwareupdate.failure-reason) ] } };
my $act = { Type => 'com.apple.activation.simple',
            Identifier => 'com.example.act',
            Payload => { StandardConfigurations => ['com.example.su',
                                                    'com.example.subs'] } };

$t->enroll('DEV1', 'dev1');
$t->enroll('DEV2', 'dev2');

# --- not assigned: empty but well-formed ---------------------------------
my $tk0 = tokens('DEV1', 'dev1');
like $tk0->{DeclarationsToken}, qr/^[0-9a-f]{40}$/, 'a token with nothing';
like $tk0->{Timestamp}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'RFC 3339';
my $it = items('DEV1', 'dev1');
is_deeply $it->{Declarations}, { Activations => [], Configurations => [],
                                 Assets => [], Management => [] },
    'all four arrays, empty';
is $it->{DeclarationsToken}, $tk0->{DeclarationsToken}, 'same token';
is $redis->hget('mdm:{DEV1}:ddm:DEV1', 'on_ms') > 0, 1, 'DDM is on';

# --- put, set, assign -----------------------------------------------------
my $put = fj('mdm_ddm_put', $json->encode([$su, $subs, $act]));
is_deeply [map { $_->{result} } @{ $put->{declarations} }],
    [qw(created created created)], 'three declarations created';
my %st = map { $_->{Identifier} => $_->{ServerToken} } @{ $put->{declarations} };
like $st{'com.example.su'}, qr/^[0-9a-f]{40}$/, 'ServerToken';
$put = fj('mdm_ddm_put', $json->encode($su));
is $put->{declarations}[0]{result}, 'unchanged', 'same content: unchanged';
is $put->{declarations}[0]{ServerToken}, $st{'com.example.su'},
    'same content, same token';
# the same content, keys in another order and spaced out
my $resp = fc('mdm_ddm_put', '{ "Payload": {"TargetLocalDateTime":'
    . '"2026-12-24T18:00:00", "TargetOSVersion": "26.1"}, "Identifier":'
    . ' "com.example.su", "Type": '
    . '"com.apple.configuration.softwareupdate.enforcement.specific" }');
is decode_json($resp)->{declarations}[0]{result}, 'unchanged',
    'key order and spacing do not change the token';

is fj('mdm_ddm_set_add', 'fleet', qw(com.example.su com.example.subs
      com.example.act))->{added}, 3, 'set-add';
my $as = fj('mdm_ddm_assign', 1, 'fleet', 'DEV1');
is_deeply $as, { assigned => 1, queued => 1, pushes => 1 },
    'assign: one command, one push';

# the sync command
$r = report('DEV1', 'dev1', Status => 'Idle');
like $r->{body}, qr{<string>DeclarativeManagement</string>},
    'the device gets a DeclarativeManagement command';
my $u = uuid_of($r);
$r = report('DEV1', 'dev1', Status => 'Acknowledged', CommandUUID => $u);
is $r->{status}, 200, 'acknowledged';

my $tk1 = tokens('DEV1', 'dev1');
isnt $tk1->{DeclarationsToken}, $tk0->{DeclarationsToken},
    'assignment changes the token';
my $tk1b = tokens('DEV1', 'dev1');
is_deeply $tk1b, $tk1, 'nothing changed: same token and Timestamp';
$it = items('DEV1', 'dev1');
is $it->{DeclarationsToken}, $tk1->{DeclarationsToken}, 'items token';
is_deeply [map { $_->{Identifier} } @{ $it->{Declarations}{Activations} }],
    ['com.example.act'], 'the activation';
is_deeply [map { $_->{Identifier} } @{ $it->{Declarations}{Configurations} }],
    ['com.example.su', 'com.example.subs'], 'the configurations, sorted';
is $it->{Declarations}{Configurations}[0]{ServerToken}, $st{'com.example.su'},
    'their ServerTokens';

# --- fetch ---------------------------------------------------------------
like $t->slurp('access.log'),
    qr/^200 DeclarativeManagement id=DEV1 .* ddm=declaration-items$/m,
    '$mdm_ddm_endpoint in the access log';
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.su');
is $r->{status}, 200, 'fetch a configuration';
is $r->{headers}{'content-type'}, 'application/json', 'as JSON';
my $d = decode_json($r->{body});
is $d->{Type}, $su->{Type}, 'Type';
is $d->{Identifier}, 'com.example.su', 'Identifier';
is $d->{ServerToken}, $st{'com.example.su'}, 'ServerToken as advertised';
is_deeply $d->{Payload}, $su->{Payload}, 'Payload';
is ref decode_json(dm('DEV1', 'dev1',
    'declaration/configuration/com.example.subs')->{body})
    ->{Payload}{StatusItems}, 'ARRAY', 'arrays stay arrays';
$r = dm('DEV1', 'dev1', 'declaration/activation/com.example.act');
is $r->{status}, 200, 'fetch the activation';

my $before = $t->redis_state;
$t->mark_log;
$r = dm('DEV1', 'dev1', 'declaration/activation/com.example.su');
is $r->{status}, 404, 'kind does not match: 404';
like $t->log_since_mark, qr/com\.example\.su is a configuration, not a/,
    'logged';
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.none');
is $r->{status}, 404, 'unknown declaration: 404';
# another enrollment's declaration
fj('mdm_ddm_put', $json->encode({ %$su, Identifier => 'com.example.other' }));
fj('mdm_ddm_set_add', 'other', 'com.example.other');
$before = $t->redis_state;
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.other');
is $r->{status}, 404, "another enrollment's declaration: 404";
unlike $r->{body}, qr/TargetOSVersion/, 'not its content';

# --- status --------------------------------------------------------------
my $report = { StatusItems => {
        device => { 'operating-system' => { version => '26.0',
                                             'build-version' => '23A341' } },
        softwareupdate => { 'install-state' => 'downloading',
                            'pending-version' => { 'os-version' => '26.1',
                                                   'build-version' => '23B82' },
                            'failure-reason' => { count => 0 } },
        management => { declarations => {
            activations => [ { identifier => 'com.example.act',
                               active => JSON::PP::true, valid => 'valid',
                               'server-token' => $st{'com.example.act'} } ],
            configurations => [
                { identifier => 'com.example.su', active => JSON::PP::true,
                  valid => 'valid',
                  'server-token' => $st{'com.example.su'} },
                { identifier => 'com.example.subs', active => JSON::PP::false,
                  valid => 'invalid',
                  'server-token' => $st{'com.example.subs'},
                  reasons => [ { code => 'Error.ConfigurationCannotBeApplied' } ]
                } ],
            assets => [], management => [] } } },
    Errors => [], FullReport => JSON::PP::true };
my $ev = $t->events_len;
$r = dm('DEV1', 'dev1', 'status', data => $json->encode($report));
is $r->{status}, 200, 'status: 200';
is $r->{body}, '', 'empty body';
my $s = fj('mdm_ddm_status', 'DEV1');
is $s->{items}{'device.operating-system.version'}, '26.0', 'OS version';
is $s->{items}{'softwareupdate.install-state'}, 'downloading',
    'install state';
is_deeply $s->{items}{'softwareupdate.pending-version'},
    { 'os-version' => '26.1', 'build-version' => '23B82' },
    'an object-valued item is one item';
is $s->{declarations}{'com.example.subs'}{valid}, 'invalid',
    'declaration state';
ok $s->{full_report_ms}, 'full report recorded';
my @ev = map { { @{ $_->[1] } } } @{ $redis->xrange('mdm:events', '-', '+') };
ok((grep { $_->{type} eq 'DDMDeclarationInvalid'
           && $_->{identifier} eq 'com.example.subs' } @ev),
   'an event for the invalid declaration');
ok((grep { $_->{type} eq 'DDMSoftwareUpdate'
           && $_->{install_state} eq '"downloading"' } @ev),
   'an event for the software-update state');
# a partial report updates; the same invalid state is no new event
my $n_inv = grep { $_->{type} eq 'DDMDeclarationInvalid' } @ev;
$r = dm('DEV1', 'dev1', 'status', data => $json->encode({ StatusItems => {
    softwareupdate => { 'install-state' => 'installing' } } }));
is $r->{status}, 200, 'partial report';
$s = fj('mdm_ddm_status', 'DEV1');
is $s->{items}{'softwareupdate.install-state'}, 'installing', 'updated';
is $s->{items}{'device.operating-system.version'}, '26.0', 'others kept';
# FullReport replaces
$r = dm('DEV1', 'dev1', 'status', data => $json->encode({ StatusItems => {
    device => { 'operating-system' => { version => '26.1' } } },
    FullReport => JSON::PP::true }));
$s = fj('mdm_ddm_status', 'DEV1');
is_deeply $s->{items}, { 'device.operating-system.version' => '26.1' },
    'FullReport replaced what was stored';
is_deeply $s->{declarations}, {}, 'declaration states too';

# --- token rules: every kind of change, and only changes -----------------
my $prev = tokens('DEV1', 'dev1');
sub changed_by {
    my ($what) = @_;
    my $now = tokens('DEV1', 'dev1');
    isnt $now->{DeclarationsToken}, $prev->{DeclarationsToken},
        "$what changes the token";
    $prev = $now;
}
fj('mdm_ddm_put', $json->encode({ %$su, Payload => {
    %{ $su->{Payload} }, TargetOSVersion => '26.2' } }));
changed_by('a changed declaration');
fj('mdm_ddm_touch', 'com.example.su');
changed_by('touch');
fj('mdm_ddm_put', $json->encode({ %$su, Identifier => 'com.example.su2' }));
fj('mdm_ddm_set_add', 'fleet', 'com.example.su2');
changed_by('set-add');
fj('mdm_ddm_set_remove', 'fleet', 'com.example.su2');
changed_by('set-remove');
fj('mdm_ddm_assign', 1, 'other', 'DEV1');
changed_by('assign');
fj('mdm_ddm_unassign', 1, 'other', 'DEV1');
changed_by('unassign');
# unrelated changes do not
fj('mdm_ddm_put', $json->encode({ %$su, Identifier => 'com.example.other',
    Payload => { %{ $su->{Payload} }, TargetOSVersion => '27.0' } }));
is tokens('DEV1', 'dev1')->{DeclarationsToken}, $prev->{DeclarationsToken},
    'a change to a set it does not have leaves the token';
is tokens('DEV1', 'dev1')->{Timestamp}, $prev->{Timestamp},
    'and its Timestamp';

# --- coalescing: one pending command per enrollment ---------------------
my $q = $redis->zcard('mdm:{DEV1}:q:DEV1');
fj('mdm_ddm_touch', 'com.example.act');
fj('mdm_ddm_touch', 'com.example.act');
my $sy = fj('mdm_ddm_sync', 'DEV1');
is $sy->{queued}, 0, 'sync with one pending: nothing more queued';
is $sy->{already}, 1, 'already pending';
is $redis->zcard('mdm:{DEV1}:q:DEV1'), 1, 'one DeclarativeManagement queued';
$r = report('DEV1', 'dev1', Status => 'Idle');
$r = report('DEV1', 'dev1', Status => 'Acknowledged', CommandUUID => uuid_of($r));
is $redis->zcard('mdm:{DEV1}:q:DEV1'), 0, 'done';
is fj('mdm_ddm_sync', 'DEV1')->{queued}, 1, 'then sync queues a new one';

# --- scope change between items and fetch -------------------------------
fj('mdm_ddm_put', $json->encode({ %$su, Identifier => 'com.example.gone' }));
fj('mdm_ddm_set_add', 'fleet', 'com.example.gone');
$it = items('DEV1', 'dev1');
ok((grep { $_->{Identifier} eq 'com.example.gone' }
    @{ $it->{Declarations}{Configurations} }), 'advertised');
fj('mdm_ddm_set_remove', 'fleet', 'com.example.gone');
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.gone');
is $r->{status}, 200, 'out of scope after the items: still served';
$it = items('DEV1', 'dev1');
ok(!(grep { $_->{Identifier} eq 'com.example.gone' }
     @{ $it->{Declarations}{Configurations} }), 'no longer advertised');
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.gone');
is $r->{status}, 404, 'after the next items: 404';

# --- the user channel is its own enrollment -----------------------------
$prev = tokens('DEV1', 'dev1');
$t->put('/mdm/checkin', $t->token_update('DEV1', UserID => 'U1'),
        cert => 'dev1');
my $ut = tokens('DEV1', 'dev1', user => 'U1');
is $ut->{DeclarationsToken}, $tk0->{DeclarationsToken},
    'user channel: nothing assigned';
is fj('mdm_ddm_assign', 1, 'other', 'DEV1:U1')->{queued}, 1,
    'user channel gets its own command';
isnt tokens('DEV1', 'dev1', user => 'U1')->{DeclarationsToken},
    $ut->{DeclarationsToken}, 'its token changes';
is tokens('DEV1', 'dev1')->{DeclarationsToken}, $prev->{DeclarationsToken},
    'the device channel token does not';
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.other',
        user => 'U1');
is $r->{status}, 200, 'user channel fetches its declaration';
$r = dm('DEV1', 'dev1', 'declaration/configuration/com.example.subs',
        user => 'U1');
is $r->{status}, 404, "but not the device channel's";
my $show = fj('mdm_ddm_show', 'DEV1:U1');
is_deeply $show->{sets}, ['other'], 'show: sets';
is $show->{declarations}[0]{Identifier}, 'com.example.other',
    'show: what it resolves to';

# --- admin refusals change nothing --------------------------------------
$before = $t->redis_state;
for my $c (
    [['mdm_ddm_assign', 1, 'nosuch', 'DEV1'], qr/no set nosuch/],
    [['mdm_ddm_assign', 1, 'fleet', 'NOSUCH'], qr/unknown enrollment id/],
    [['mdm_ddm_set_add', 'fleet', 'com.example.none'], qr/no declaration/],
    [['mdm_ddm_delete', 'com.example.su'], qr/is in set fleet/],
    [['mdm_ddm_set_remove', 'fleet', 'com.example.su'],
     qr/com\.example\.act .* references com\.example\.su/],
    [['mdm_ddm_put', $json->encode({ %$act, Identifier => 'com.example.a2',
        Payload => { StandardConfigurations => ['com.example.nope'] } })],
     qr/references com\.example\.nope, which does not exist/],
    [['mdm_ddm_put', '{"Type": 1'], qr/./],
) {
    my ($args, $re) = @$c;
    eval { fc(@$args) };
    like $@, $re, "refused: $args->[0] $args->[1]";
}
$t->state_unchanged($before, 'refused admin writes changed nothing');

# --- bad device input: clear status, one log line, nothing changed ------
$before = $t->redis_state;
for my $c (
    ['Data not JSON', 'status', 400, data => 'not json'],
    ['Data not an object', 'status', 400, data => '[1,2]'],
    ['status without Data', 'status', 400],
    ['unknown Endpoint', 'frobnicate', 400],
    ['unknown kind', 'declaration/profile/com.example.su', 400],
    ['identifier with ..', 'declaration/configuration/a..b', 400],
    ['identifier with /', 'declaration/configuration/a/b', 400],
    ['identifier over 64', 'declaration/configuration/' . ('x' x 65), 400],
    ['empty identifier', 'declaration/configuration/', 400],
    ['tokens with bad Data', 'tokens', 400, data => '{'],
) {
    my ($name, $ep, $code, %o) = @$c;
    $t->mark_log;
    $r = dm('DEV2', 'dev2', $ep, %o);
    is $r->{status}, $code, "$name: $code";
    my @lines = grep { /mdm: $code DeclarativeManagement/ }
                split /\n/, $t->log_since_mark;
    is scalar(@lines), 1, "$name: one log line" or diag $t->log_since_mark;
}
# a StatusReport over the check-in body limit (64 KB)
$t->mark_log;
$r = dm('DEV2', 'dev2', 'status', data => '{"StatusItems":{"x":"'
        . ('a' x 60000) . '"}}');
is $r->{status}, 413, 'StatusReport over the check-in body limit: 413';
like $t->log_since_mark, qr/too large body|mdm: 413 /, 'logged';
# not enabled
$t->put('/mdm/checkin', MdmTest::plist(MessageType => 'CheckOut',
        Topic => $MdmTest::TOPIC, UDID => 'DEV2'), cert => 'dev2');
$before = $t->redis_state;
$r = dm('DEV2', 'dev2', 'tokens');
is $r->{status}, 403, 'DDM from an enrollment that is not enabled: 403';
unlike $r->{body}, qr/unrecognized/, 'not the unenrolling 403';
$t->state_unchanged($before, 'bad DDM input changed nothing');

# --- a new enrollment starts with DDM off; forget takes its DDM keys -----
$t->enroll('DEV3', 'dev3');
fj('mdm_ddm_assign', 1, 'fleet', 'DEV3');
tokens('DEV3', 'dev3');
dm('DEV3', 'dev3', 'status', data => '{"StatusItems":{"device":{"model":'
   . '{"family":"Mac"}}}}');
$r = $t->put('/mdm/checkin', $t->authenticate('DEV3'), cert => 'dev3');
is $r->{status}, 200, 're-Authenticate';
ok !fj('mdm_ddm_show', 'DEV3')->{on}, 'DDM is off again';
is_deeply fj('mdm_ddm_status', 'DEV3')->{items}, {}, 'its status is gone';
is_deeply fj('mdm_ddm_show', 'DEV3')->{sets}, ['fleet'],
    'the assignment stays';
$redis->fcall('mdm_forget', 0, 'DEV3');
# (results expire after result_ttl; mdmctl forget deletes them)
is_deeply [grep { !/:res:/ } sort $redis->keys('mdm:{DEV3}:*')], [],
    'forget: no DEV3 keys left';
ok !$redis->sismember('mdm:ddm:setenr:fleet', 'DEV3'),
    'forget: off the set\'s enrollments';

# --- fan-out: a change reaches every assigned enrollment ----------------
my @many = map { sprintf 'FAN%05d', $_ } 1 .. 4500;
for my $e (@many) {
    $redis->hset("mdm:{$e}:enr:$e", 'enabled', '1', 'type', 'Device',
                 sub {});
}
$redis->wait_all_responses;
fj('mdm_ddm_put', $json->encode({ %$su, Identifier => 'com.example.fan' }));
fj('mdm_ddm_set_add', 'fan', 'com.example.fan');
for (my $i = 0; $i < @many; $i += 2000) {
    my @part = @many[$i .. ($i + 1999 > $#many ? $#many : $i + 1999)];
    fj('mdm_ddm_assign', 1, 'fan', @part);
}
# a change while every one still has its command queued: coalesced
sub fan_out {
    my $f = fj('mdm_ddm_touch', 'com.example.fan')->{fanout};
    ok $f->{remaining} > 0, 'a big fan-out is left for more calls';
    my %sum = (synced => $f->{synced}, queued => $f->{queued});
    while ($f->{remaining}) {
        $f = fj('mdm_ddm_fanout');
        $sum{$_} += $f->{$_} for qw(synced queued);
    }
    return \%sum;
}
my $sum = fan_out();
is $sum->{synced}, scalar(@many), 'every enrollment reached';
is $sum->{queued}, 0, 'none got a second command';
is scalar(grep { $redis->zcard("mdm:{$_}:q:$_") == 1 } @many), scalar(@many),
    'each still has exactly one';
# the devices take and acknowledge them; the next change queues again
my %uu;
for my $e (@many) {
    $redis->zrange("mdm:{$e}:q:$e", 0, 0, sub { $uu{$_[0][0]} = 1 });
}
$redis->wait_all_responses;
for my $u (keys %uu) {
    1 while $redis->fcall('mdm_cancel_command', 0, $u)->[-1];
}
sub pending { scalar grep { defined } $redis->hmget('mdm:ddm:pending', @many) }
is pending(), 0, 'no DeclarativeManagement pending';
$sum = fan_out();
is $sum->{queued}, scalar(@many), 'a command for every enrollment';
is scalar(grep { $redis->zcard("mdm:{$_}:q:$_") == 1 } @many), scalar(@many),
    'each has one DeclarativeManagement queued';
is pending(), scalar(@many), 'each pending';

$t->finish;
done_testing;
