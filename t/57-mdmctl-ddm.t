#!/usr/bin/perl
# mdmctl ddm against the real stack: every verb as a table and as --json,
# the DeclarativeManagement command a change queues and the device fetches,
# a device's DDM check-ins and status report as show and status see them,
# enrollment ids from stdin in chunks of 2,000 with the fan-out continued
# to the end, and bad input refused with one error line and nothing changed.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use JSON::PP;
use MdmTest;
use MdmctlTest qw(plist_string pval);

my $BIN = MdmTest::root() . '/mdmctl/mdmctl';
plan skip_all => "build mdmctl first ($BIN)" unless -x $BIN;

my $t = MdmTest->new;
$t->start_nginx($t->conf);
my $redis = $t->redis;
my $dir = $t->dir;
my $json = JSON::PP->new->canonical;
$ENV{MDM_REDIS} = 'unix:' . $t->redis_sock;
my $r;

sub ctl { $t->mdmctl(@_) }

sub json_of {
    my ($r) = @_;
    my $v = eval { decode_json($r->{out}) };
    diag "not JSON: $r->{out}$r->{err}" unless defined $v;
    return $v;
}

# ok(name, args...): exit 0, nothing on stderr; the result
sub ok_ctl {
    my ($name, @args) = @_;
    my $r = ctl(@args);
    is $r->{rc}, 0, "$name: exit 0" or diag $r->{err};
    is $r->{err}, '', "$name: nothing on stderr";
    return $r;
}

# --json: one line, one JSON value
sub ok_json {
    my ($name, @args) = @_;
    my $r = ok_ctl($name, @args);
    like $r->{out}, qr/\A[^\n]+\n\z/, "$name: one line";
    return json_of($r) // {};
}

# A DeclarativeManagement check-in; the response.
sub dm {
    my ($udid, $cert, $ep, %o) = @_;
    my @kv = (MessageType => 'DeclarativeManagement', UDID => $udid,
              Endpoint => $ep);
    push @kv, Data => { data => $o{data} } if defined $o{data};
    return $t->put('/mdm/checkin', MdmTest::plist(@kv), cert => $cert);
}

sub report {
    my ($udid, $cert, @kv) = @_;
    return $t->put('/mdm/connect', MdmTest::plist(UDID => $udid, @kv),
                   cert => $cert);
}

# the audit entries of type $type since stream id $from
sub audits {
    my ($type, $from) = @_;
    return grep { $_->{type} eq $type }
           map { { @{ $_->[1] } } }
           @{ $redis->xrange('mdm:audit', $from // '-', '+') };
}

sub last_audit_id {
    my $e = $redis->xrevrange('mdm:audit', '+', '-', 'COUNT', 1);
    return @$e ? $e->[0][0] : '0-0';
}

$t->enroll('DEV1', 'dev1');
$t->enroll('DEV2', 'dev2');

my $SU_TYPE = 'com.apple.configuration.softwareupdate.enforcement.specific';
my $su = { Type => $SU_TYPE, Identifier => 'com.example.su',
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
my @ids = sort map { $_->{Identifier} } $su, $subs, $act;

# --- help ----------------------------------------------------------------

my @verbs = qw(put get list delete touch set-add set-remove sets assign
               unassign show status sync);
$r = ok_ctl('ddm help', 'ddm', 'help');
for my $v (@verbs) {
    like $r->{out}, qr/^  \Q$v\E +\S/m, "ddm help lists $v";
    my $h = ok_ctl("ddm $v --help", 'ddm', $v, '--help');
    like $h->{out}, qr/^usage: mdmctl ddm \Q$v\E /, "ddm $v --help: usage";
    like $h->{out}, qr/--redis SPEC/, "ddm $v --help: the Redis options";
}
like ok_ctl('help', 'help')->{out}, qr/^  ddm +\S/m, 'mdmctl help lists ddm';
$r = ctl('ddm');
is $r->{rc}, 2, 'ddm without a verb: usage, exit 2';
like $r->{err}, qr/^usage: mdmctl ddm <command>/, 'ddm: the verbs';

# --- put, list, get ------------------------------------------------------

$r = ok_ctl('list (none)', 'ddm', 'list');
like $r->{out}, qr/\AIDENTIFIER +TYPE +SERVER_TOKEN +SETS\n\z/,
    'list: header only';
is_deeply ok_json('list --json (none)', 'ddm', 'list', '--json'), [],
    'list --json: []';

my $file = $t->spew('decls.json', $json->encode([$su, $subs, $act]));
$r = ok_ctl('put FILE', 'ddm', 'put', $file);
my %tok;
for my $id (@ids) {
    like $r->{out}, qr/^\Q$id\E +created +([0-9a-f]{40})$/m, "put: $id created";
    ($tok{$id}) = $r->{out} =~ /^\Q$id\E +created +([0-9a-f]{40})$/m;
}
like $r->{out}, qr/^0 enrollments synced: 0 DeclarativeManagement commands/m,
    'put: the fan-out (none)';

my $j = ok_json('put --json again', 'ddm', 'put', '--json', $file);
is_deeply [map { [$_->{Identifier}, $_->{result}, $_->{ServerToken}] }
           @{ $j->{declarations} }],
    [map { [$_, 'unchanged', $tok{$_}] } map { $_->{Identifier} }
     $su, $subs, $act],
    'put --json: unchanged, the same ServerTokens, in order';
is $j->{fanout}{remaining}, 0, 'put --json: the fan-out object';

is_deeply [sort map { $_->{Identifier} } @{ json_of(ctl('ddm', 'list',
    '--json')) // [] }], \@ids, 'list --json: the three';
$r = ok_ctl('list', 'ddm', 'list');
like $r->{out}, qr/^com\.example\.su +\Q$SU_TYPE\E +$tok{'com.example.su'} +-$/m,
    'list: a row per declaration, no set yet';
is scalar(() = $r->{out} =~ /\n/g), 4, 'list: header and three rows';

$r = ok_ctl('get --json', 'ddm', 'get', '--json', 'com.example.su');
is $r->{out}, $redis->hget('mdm:ddm:decl:com.example.su', 'json') . "\n",
    'get --json: the JSON as served, as it is';
my $g = json_of($r) // {};
is_deeply [@$g{qw(Type Identifier ServerToken)}],
    [$SU_TYPE, 'com.example.su', $tok{'com.example.su'}], 'get: the fields';
is_deeply $g->{Payload}, $su->{Payload}, 'get: the payload';
$r = ok_ctl('get', 'ddm', 'get', 'com.example.su');
like $r->{out}, qr/^  "Payload": \{\n/m, 'get: indented';
is_deeply json_of($r), $g, 'get: the same declaration';

# --dry-run: checked, nothing stored
my $new = { %$su, Identifier => 'com.example.su2' };
my $before = $t->redis_state;
$r = ok_ctl('put --dry-run', 'ddm', 'put', '--dry-run',
            $t->spew('new.json', $json->encode($new)));
like $r->{out}, qr/^com\.example\.su2 +\Q$SU_TYPE\E$/m, 'dry-run: its type';
like $r->{out}, qr/^1 declaration valid, nothing stored$/m, 'dry-run: said';
is_deeply ok_json('put --dry-run --json', 'ddm', 'put', '--dry-run',
                  '--json', "$dir/new.json"),
    { declarations => [{ Identifier => 'com.example.su2', Type => $SU_TYPE,
                         refs => [] }] },
    'dry-run --json: the check reply';
$t->state_unchanged($before, 'dry-run stored nothing');

# --- sets ----------------------------------------------------------------

$r = ok_ctl('set-add', 'ddm', 'set-add', 'fleet', @ids);
like $r->{out}, qr/^3 declarations added to set fleet$/m, 'set-add: three';
$j = ok_json('set-add --json', 'ddm', 'set-add', '--json', 'audit',
             'com.example.subs');
is $j->{added}, 1, 'set-add --json: added';
is $j->{fanout}{remaining}, 0, 'set-add --json: the fan-out';
$j = ok_json('set-add --json again', 'ddm', 'set-add', '--json', 'audit',
             'com.example.subs');
is $j->{added}, 0, 'set-add of a member: 0 added';

$r = ok_ctl('sets', 'ddm', 'sets');
like $r->{out}, qr/^SET +ENROLLMENTS +DECLARATIONS$/m, 'sets: header';
like $r->{out}, qr/^fleet +0 com\.example\.act, com\.example\.su, com\.example\.subs$/m,
    'sets: fleet with its members';
like $r->{out}, qr/^audit +0 com\.example\.subs$/m, 'sets: audit';
is_deeply ok_json('sets --json', 'ddm', 'sets', '--json'),
    [{ set => 'audit', declarations => ['com.example.subs'],
       enrollments => 0 },
     { set => 'fleet', declarations => \@ids, enrollments => 0 }],
    'sets --json';
like ctl('ddm', 'list')->{out},
    qr/^com\.example\.subs +\S+ +\S+ +audit, fleet$/m, 'list: the sets';

# --- assign, show, the device's sync -------------------------------------

$r = ok_ctl('assign', 'ddm', 'assign', 'DEV1', 'fleet');
is $r->{out}, "1 assignment added for 1 enrollment: 1 DeclarativeManagement "
    . "command queued, 1 push request\n", 'assign: one line';
$j = ok_json('assign --json', 'ddm', 'assign', '--json', 'DEV2', 'fleet',
             'audit');
is_deeply $j, { assigned => 2, queued => 1, pushes => 1 },
    'assign --json: two sets, one command, one push';

$r = ok_ctl('show (DDM off)', 'ddm', 'show', 'DEV1');
like $r->{out}, qr/^ddm +off\b/m, 'show: DDM off before its first message';
like $r->{out}, qr/^sets +fleet$/m, 'show: its set';
like $r->{out}, qr/^configuration +com\.example\.su +$tok{'com.example.su'}$/m,
    'show: a declaration row';
my $show = ok_json('show --json', 'ddm', 'show', '--json', 'DEV1');
is $show->{enrollment}, 'DEV1', 'show --json: enrollment';
ok !$show->{on}, 'show --json: off';
is_deeply $show->{sets}, ['fleet'], 'show --json: sets';
is_deeply [sort map { $_->{Identifier} } @{ $show->{declarations} }], \@ids,
    'show --json: what it resolves to';
my $pending = $show->{pending_command};
ok $pending, 'show --json: the pending DeclarativeManagement command';
my $q = json_of(ctl('queue', '--json', 'DEV1')) // [];
is_deeply [map { [$_->{uuid}, $_->{request_type}] } @$q],
    [[$pending, 'DeclarativeManagement']], 'it is in the queue';

# the device runs it: command, tokens (DDM turns on), status report
$r = report('DEV1', 'dev1', Status => 'Idle');
my $cmd = eval { plist_string($r->{body}) };
is +(pval($cmd, 'Command', 'RequestType') // [])->[1],
    'DeclarativeManagement',
    'the device gets the command';
report('DEV1', 'dev1', Status => 'Acknowledged', CommandUUID => $pending);
$r = dm('DEV1', 'dev1', 'tokens');
is $r->{status}, 200, 'tokens';
my $tokens = (eval { decode_json($r->{body}) } // {})->{SyncTokens} // {};
$show = ok_json('show --json (DDM on)', 'ddm', 'show', '--json', 'DEV1');
ok $show->{on}, 'show --json: on after its tokens request';
ok $show->{on_ms} > 0, 'show --json: on_ms';
is $show->{DeclarationsToken}, $tokens->{DeclarationsToken},
    'show: the DeclarationsToken the device got';
is $show->{Timestamp}, $tokens->{Timestamp}, 'show: its Timestamp';
is $show->{pending_command}, undef, 'show: nothing pending';
$r = ok_ctl('show (DDM on)', 'ddm', 'show', 'DEV1');
like $r->{out}, qr/^ddm +on since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m,
    'show: on since';
like $r->{out}, qr/^DeclarationsToken +\Q$tokens->{DeclarationsToken}\E$/m,
    'show: the token';
like $r->{out}, qr/^pending_command +-$/m, 'show: none pending';

# --- status --------------------------------------------------------------

$r = ok_ctl('status (no report)', 'ddm', 'status', 'DEV1');
like $r->{out}, qr/^last_report +-$/m, 'status: no report yet';
my $report = { StatusItems => {
        softwareupdate => { 'install-state' => 'downloading' },
        device => { 'operating-system' => { version => '26.0' } },
        management => { declarations => {
            activations => [ { identifier => 'com.example.act',
                               active => JSON::PP::true, valid => 'valid',
                               'server-token' => $tok{'com.example.act'} } ],
            configurations => [
                { identifier => 'com.example.su', active => JSON::PP::true,
                  valid => 'valid', 'server-token' => $tok{'com.example.su'} },
                { identifier => 'com.example.subs', active => JSON::PP::false,
                  valid => 'invalid',
                  'server-token' => $tok{'com.example.subs'},
                  reasons => [ { code => 'Error.ConfigurationCannotBeApplied' } ]
                } ],
            assets => [], management => [] } } },
    Errors => [ { code => 'Error.Example' } ], FullReport => JSON::PP::true };
$r = dm('DEV1', 'dev1', 'status', data => $json->encode($report));
is $r->{status}, 200, 'the device reports its status';

$r = ok_ctl('status', 'ddm', 'status', 'DEV1');
like $r->{out}, qr/^last_report +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m,
    'status: the report time';
like $r->{out}, qr/^last_full_report +\d{4}-/m, 'status: a full report';
like $r->{out}, qr/^com\.example\.su +yes +valid +$tok{'com.example.su'} +-$/m,
    'status: an active, valid declaration';
like $r->{out},
    qr/^com\.example\.subs +no +invalid +\S+ +Error\.ConfigurationCannotBeApplied$/m,
    'status: an invalid one with its reason';
like $r->{out}, qr/^softwareupdate\.install-state +downloading$/m,
    'status: the install state';
like $r->{out}, qr/^device\.operating-system\.version +26\.0$/m,
    'status: the OS version';
like $r->{out}, qr/^errors:\n  \{"code":"Error\.Example"\}$/m,
    'status: the errors';
my $s = ok_json('status --json', 'ddm', 'status', '--json', 'DEV1');
is $s->{enrollment}, 'DEV1', 'status --json: enrollment';
is $s->{items}{'softwareupdate.install-state'}, 'downloading',
    'status --json: items';
is $s->{declarations}{'com.example.subs'}{valid}, 'invalid',
    'status --json: declarations';
is_deeply $s->{errors}, [{ code => 'Error.Example' }], 'status --json: errors';
ok $s->{report_ms} && $s->{full_report_ms}, 'status --json: the times';

# --- sync, touch, put (changed), set-remove, unassign, delete ----------------

$r = ok_ctl('sync', 'ddm', 'sync', 'DEV1', 'DEV2');
# (DEV1's push of the assignment still waits: nothing sends pushes here)
my $sync_re = '^2 enrollments \(1 had one pending\): 1 DeclarativeManagement '
    . 'command queued, [01] push requests?$';
like $r->{out}, qr/$sync_re/,
    'sync: DEV1 queued, DEV2 had one';
$j = ok_json('sync --json', 'ddm', 'sync', '--json', 'DEV1');
is_deeply [@$j{qw(queued already)}], [0, 1], 'sync --json: coalesced';

$r = ok_ctl('touch', 'ddm', 'touch', 'com.example.su');
my ($touched) = $r->{out} =~ /^com\.example\.su +([0-9a-f]{40})$/m;
ok $touched && $touched ne $tok{'com.example.su'}, 'touch: a new ServerToken';
like $r->{out}, qr/^2 enrollments synced: /m, 'touch: both enrollments synced';
$j = ok_json('touch --json', 'ddm', 'touch', '--json', 'com.example.su');
isnt $j->{declarations}[0]{ServerToken}, $touched, 'touch --json: another';
is $j->{fanout}{synced}, 2, 'touch --json: the fan-out';
$tok{'com.example.su'} = $j->{declarations}[0]{ServerToken};

# a changed declaration from stdin
my $su2 = { %$su, Payload => { %{ $su->{Payload} },
                               TargetOSVersion => '26.2' } };
$r = ctl({ stdin => $json->encode($su2) }, 'ddm', 'put', '-');
is $r->{rc}, 0, 'put - (stdin)' or diag $r->{err};
like $r->{out}, qr/^com\.example\.su +changed +(?!$tok{'com.example.su'})[0-9a-f]{40}$/m,
    'put -: changed, a new token';
like $r->{out}, qr/^2 enrollments synced: /m, 'put -: its set synced';
is json_of(ctl('ddm', 'get', '--json', 'com.example.su'))->{Payload}
    {TargetOSVersion}, '26.2', 'get: the new content';

$r = ok_ctl('set-remove', 'ddm', 'set-remove', 'audit', 'com.example.subs');
like $r->{out}, qr/^1 declaration removed from set audit$/m, 'set-remove';
like $r->{out}, qr/^1 enrollment synced: /m, 'set-remove: DEV2 synced';
$j = ok_json('set-remove --json', 'ddm', 'set-remove', '--json', 'audit',
             'com.example.subs');
is $j->{removed}, 0, 'set-remove --json: not a member (0)';

$r = ok_ctl('unassign', 'ddm', 'unassign', 'DEV2', 'audit');
like $r->{out}, qr/^1 assignment removed for 1 enrollment: /, 'unassign';
$j = ok_json('unassign --json', 'ddm', 'unassign', '--json', 'DEV2', 'fleet');
is $j->{unassigned} // $j->{assigned}, 1, 'unassign --json: one';
is_deeply json_of(ctl('ddm', 'show', '--json', 'DEV2'))->{sets}, [],
    'DEV2 has no set left';

ok_ctl('put (loose)', 'ddm', 'put', $t->spew('loose.json', $json->encode(
    { %$su, Identifier => 'com.example.loose' })));
$r = ok_ctl('delete', 'ddm', 'delete', 'com.example.loose');
is $r->{out}, "1 declaration deleted\n", 'delete: one line';
ok_ctl('put (loose again)', 'ddm', 'put', "$dir/loose.json");
is_deeply ok_json('delete --json', 'ddm', 'delete', '--json',
                  'com.example.loose'), { deleted => 1 }, 'delete --json';
is $redis->exists('mdm:ddm:decl:com.example.loose'), 0, 'deleted';

# --- bulk: ids from stdin, 2,000 per call, the fan-out to its end --------

my @bulk = map { sprintf 'DDMB%05d', $_ } 1 .. 4500;
$t->spew('bulk.redis', join '',
    map { "HSET mdm:{$_}:enr:$_ type Device enabled 1\n" } @bulk);
system("redis-cli -s " . $t->redis_sock . " < $dir/bulk.redis > /dev/null");
is $redis->exists('mdm:{DDMB04500}:enr:DDMB04500'), 1, 'bulk enrollments';
my $stdin = join("\n", '# fleet', @bulk, '');

my $from = last_audit_id();
$r = ctl({ stdin => $stdin }, 'ddm', 'assign', '--json', '-', 'fleet');
is $r->{rc}, 0, 'bulk assign from stdin' or diag $r->{err};
is_deeply json_of($r), { assigned => 4500, queued => 4500, pushes => 4500 },
    'bulk assign --json: the counts of every call, summed';
is_deeply [map { $_->{enrollments} } audits('DDMAssign', $from)],
    [2000, 2000, 500], 'bulk assign: three calls of at most 2,000';
is $redis->scard('mdm:ddm:setenr:fleet'), 4501, 'bulk: fleet assigned';

# a change to a set of 4,501 enrollments: more than one call's fan-out
$from = last_audit_id();
$j = ok_json('touch --json (bulk fan-out)', 'ddm', 'touch', '--json',
             'com.example.act');
is $j->{fanout}{synced}, 4501, 'touch: every enrollment of the set synced';
is $j->{fanout}{remaining}, 0, 'touch: the fan-out ran to its end';
is $redis->hlen('mdm:ddm:dirty'), 0, 'no fan-out left';
$r = ctl('ddm', 'touch', '--verbose', 'com.example.act');
is $r->{rc}, 0, 'touch --verbose';
like $r->{err}, qr/^mdmctl ddm touch: fan-out: \d+ enrollments synced, 1 set to go$/m,
    'touch --verbose: progress on stderr';
like $r->{out}, qr/^4501 enrollments synced: /m, 'touch: the total';

$r = ctl({ stdin => $stdin }, 'ddm', 'sync', '--json', '-');
is $r->{rc}, 0, 'bulk sync from stdin' or diag $r->{err};
$j = json_of($r) // {};
is $j->{queued} + $j->{already}, 4500, 'bulk sync: every enrollment';
$r = ctl({ stdin => $stdin }, 'ddm', 'sync', '-');
like $r->{out}, qr/^4500 enrollments \(4500 had one pending\): 0 /,
    'bulk sync: all pending now';

# an unknown id at the very end: refused before the first call
$before = $t->redis_state;
my $events = $t->events_len;
$r = ctl({ stdin => join("\n", @bulk, 'NOSUCH', '') }, 'ddm', 'unassign',
         '-', 'fleet');
is $r->{rc}, 1, 'bulk unassign with an unknown id: exit 1';
is $r->{err}, "mdmctl ddm unassign: unknown enrollment id NOSUCH\n",
    'bulk: one error line naming it';
$t->state_unchanged($before, 'bulk: nothing unassigned');
is $t->events_len, $events, 'bulk: no event';

$r = ctl({ stdin => $stdin }, 'ddm', 'unassign', '--json', '-', 'fleet');
is $r->{rc}, 0, 'bulk unassign' or diag $r->{err};
$j = json_of($r) // {};
is $j->{unassigned} // $j->{assigned}, 4500, 'bulk unassign: 4,500';
is $redis->scard('mdm:ddm:setenr:fleet'), 1, 'bulk: only DEV1 left';

# --- bad input: one line, exit status, nothing on stdout, nothing changed ----

my $bad_su = { %$su, Identifier => 'com.example.bad',
               Payload => { TargetLocalDateTime => '2026-12-24T18:00:00' } };
my $bad_type = { %$su, Identifier => 'com.example.bad',
                 Payload => { %{ $su->{Payload} }, TargetOSVersion => 26 } };
my $bad_ref = { %$act, Identifier => 'com.example.badact',
                Payload => { StandardConfigurations => ['com.example.none'] } };
my @bad = (
    # [args, stdin, exit, error]
    [['put', $t->spew('b3.json', $json->encode($bad_ref))], undef, 1,
     qr/^mdmctl ddm put: .*com\.example\.none/],
    [['put', $t->spew('b4.json', '{"Type": ')], undef, 1,
     qr/^mdmctl ddm put: /],
    [['put', "$dir/nosuch.json"], undef, 1,
     qr/^mdmctl ddm put: \S+nosuch\.json: No such file/],
    [['put', '-'], "  \n", 1, qr/^mdmctl ddm put: stdin: no declaration$/],
    [['put'], undef, 2, qr/^mdmctl ddm put: give one FILE/],
    [['put', '--bogus', 'x'], undef, 2, qr/unknown option --bogus/],
    [['get', 'com.example.none'], undef, 1,
     qr/^mdmctl ddm get: no declaration com\.example\.none$/],
    [['get'], undef, 2, qr/^mdmctl ddm get: give one/],
    [['list', 'x'], undef, 2, qr/no arguments/],
    [['delete', 'com.example.none'], undef, 1,
     qr/^mdmctl ddm delete: no declaration com\.example\.none$/],
    [['delete', 'com.example.su'], undef, 1,
     qr/^mdmctl ddm delete: declaration com\.example\.su is in set fleet/],
    [['delete'], undef, 2, qr/give one or more/],
    [['touch', 'com.example.su', 'com.example.none'], undef, 1,
     qr/^mdmctl ddm touch: no declaration com\.example\.none$/],
    [['set-add', 'fleet', 'com.example.none'], undef, 1,
     qr/^mdmctl ddm set-add: no declaration com\.example\.none$/],
    [['set-add', 'bad set', 'com.example.su'], undef, 1,
     qr/^mdmctl ddm set-add: .*set/],
    [['set-add', 'other', 'com.example.act'], undef, 1,
     qr/^mdmctl ddm set-add: declaration com\.example\.act references com\.example\.su/],
    [['set-add', 'fleet'], undef, 2, qr/give a set and/],
    [['set-remove', 'nosuchset', 'com.example.su'], undef, 1,
     qr/^mdmctl ddm set-remove: no set nosuchset$/],
    [['set-remove', 'fleet', 'com.example.su'], undef, 1,
     qr/^mdmctl ddm set-remove: declaration com\.example\.act .*references com\.example\.su/],
    [['assign', 'DEV1', 'nosuchset'], undef, 1,
     qr/^mdmctl ddm assign: no set nosuchset$/],
    [['assign', 'NOSUCH', 'fleet'], undef, 1,
     qr/^mdmctl ddm assign: unknown enrollment id NOSUCH$/],
    [['assign', '-', 'fleet'], "DEV2\nNOSUCH\n", 1,
     qr/^mdmctl ddm assign: unknown enrollment id NOSUCH$/],
    [['assign', '-', 'fleet'], "# nothing\n", 1,
     qr/^mdmctl ddm assign: no enrollment ids on stdin$/],
    [['assign', '-', 'fleet'], "DEV2\nDEV2\n", 1,
     qr/^mdmctl ddm assign: id DEV2 given twice$/],
    [['assign', 'DEV1'], undef, 2, qr/give an enrollment id \(or -\)/],
    [['unassign', 'NOSUCH', 'fleet'], undef, 1,
     qr/^mdmctl ddm unassign: unknown enrollment id NOSUCH$/],
    [['unassign', 'DEV1', 'nosuchset'], undef, 1, qr/no set nosuchset$/],
    [['sync', 'DEV1', 'NOSUCH'], undef, 1,
     qr/^mdmctl ddm sync: unknown enrollment id NOSUCH$/],
    [['sync'], undef, 1, qr/^mdmctl ddm sync: no enrollment ids$/],
    [['show', 'NOSUCH'], undef, 1,
     qr/^mdmctl ddm show: unknown enrollment id NOSUCH$/],
    [['show'], undef, 2, qr/give one enrollment id/],
    [['status', 'NOSUCH'], undef, 1,
     qr/^mdmctl ddm status: unknown enrollment id NOSUCH$/],
    [['bogus'], undef, 2, qr/^mdmctl ddm: unknown command "bogus"/],
);

sub refused {
    my ($what, @list) = @_;
    my $before = $t->redis_state;
    my $events = $t->events_len;
    my $audit = $redis->xlen('mdm:audit');
    for my $b (@list) {
        my ($args, $in, $rc, $re) = @$b;
        my $name = substr(join(' ', 'ddm', map { s{^\Q$dir\E/}{}r } @$args)
                          . (defined $in ? ' <stdin' : ''), 0, 70);
        my $r = ctl(defined $in ? { stdin => $in } : (), 'ddm', @$args);
        is $r->{rc}, $rc, "$name: exit $rc";
        like $r->{err}, $re, "$name: error text";
        is scalar(() = $r->{err} =~ /\n/g), 1, "$name: one line"
            or diag $r->{err};
        is $r->{out}, '', "$name: nothing on stdout";
    }
    $t->state_unchanged($before, "$what changed nothing");
    is $t->events_len, $events, "no events from $what";
    is $redis->xlen('mdm:audit'), $audit, "no audit entry from $what";
}

refused('bad input', @bad);

# Apple's schemas: mdm.lua's JSON parser is a stub that takes any payload
# until the ddm-schema branch is merged
my $stub = do {
    open my $fh, '<', MdmTest::root() . '/redis-scripts/mdm.lua' or die;
    local $/;
    <$fh> =~ /^-- BEGIN ddm stub/m;
};
{
    # todo_start: state_unchanged reports from package MdmTest
    Test::More->builder->todo_start('the schema check (ddm-schema branch)')
        if $stub;
    refused('invalid declarations',
        [['put', $t->spew('b1.json', $json->encode($bad_su))], undef, 1,
         qr/^mdmctl ddm put: .*TargetOSVersion/],
        [['put', $t->spew('b2.json', $json->encode($bad_type))], undef, 1,
         qr/^mdmctl ddm put: .*TargetOSVersion/],
        [['put', '-'],
         $json->encode([$new, { %$su, Type => 'com.apple.nope' }]), 1,
         qr/^mdmctl ddm put: .*(Type|com\.apple\.nope)/],
        [['put', '--dry-run', "$dir/b1.json"], undef, 1,
         qr/^mdmctl ddm put: .*TargetOSVersion/]);
    Test::More->builder->todo_end if $stub;
}

$t->finish;
done_testing;
