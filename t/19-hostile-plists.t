#!/usr/bin/perl
# Hostile plists from a certificate of the device CA, at the sizes an
# attacker would use (client_body_buffer_size 2m, as conf.example): binary
# nesting, shared-reference bombs and cycles, XML nesting in every spelling
# libplist's tokenizer takes, tricks that hide closing tags in comments,
# CDATA and processing instructions, element and entity floods, and the
# per-endpoint body limits. Each is refused quickly with one log line, by
# the same worker (no crash), and changes nothing in Redis. What the
# tokenizer ignores (markup inside CDATA, comments, <?...?>) is not counted,
# and the depth bound is exact: 32 levels pass, 33 do not.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time);
use MdmTest;
use HostilePlist;

$SIG{PIPE} = 'IGNORE';

my $big = 'client_max_body_size 2m; client_body_buffer_size 2m;';
my $t = MdmTest->new;
$t->start_nginx($t->conf(locations => <<"EOF"));
        location = /mdm/checkin { $big mdm_max_body checkin=2m; mdm_checkin; }
        location = /mdm/connect { $big mdm_command; }
        location = /mdm { $big mdm_max_body checkin=2m; mdm_endpoint; }
        location = /capped/checkin { $big mdm_checkin; }
        location = /capped/connect {
            $big mdm_max_body report=256k; mdm_command;
        }
EOF

$t->enroll('UDID-A', 'dev1');

# The worker processes of the master: the same pids after every row.
sub workers {
    my $master = $t->slurp('nginx.pid');
    chomp $master;
    my @p;
    for my $st (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $st or next;
        my $l = <$fh> // '';
        close $fh;
        push @p, $1 if $l =~ /^(\d+) \(.*\) \S+ (\d+) /s && $2 == $master;
    }
    return join ',', sort @p;
}

sub chunked {
    my ($body) = @_;
    my $s = '';
    $s .= sprintf("%x\r\n%s\r\n", length $1, $1)
        while $body =~ /\G(.{1,16384})/gs;
    return "${s}0\r\n\r\n";
}

my $A = sub { HostilePlist::authenticate_with('UDID-A', @_) };
my $report = sub {
    HostilePlist::xml_message(Status => 'Idle', UDID => 'UDID-A', @_);
};
my $deep = HostilePlist::xml_nested(32);           # + the root dict: 33

my @rows = (
    # name, path, body, status, log pattern, put() options
    ['binary: 120,000 nested arrays', '/mdm/checkin',
     HostilePlist::bin_nested(120_000), 400, qr/binary property list/],
    ['binary: 120,000 nested arrays as a report', '/mdm/connect',
     HostilePlist::bin_nested(120_000), 400, qr/binary property list/],
    ['binary: reference bomb, 14 refs x 8 levels', '/mdm/checkin',
     HostilePlist::bin_bomb(8, 14), 400, qr/binary property list/],
    ['binary: reference bomb, 2 refs x 22 levels', '/mdm/connect',
     HostilePlist::bin_bomb(22, 2), 400, qr/binary property list/],
    ['binary: cyclic reference', '/mdm/checkin', HostilePlist::bin_cycle(),
     400, qr/binary property list/],
    ['binary: on mdm_endpoint', '/mdm', HostilePlist::bin_bomb(8, 14), 400,
     qr/binary property list/],
    ['XML: <array\n> x 180,000, never closed', '/mdm/checkin',
     $A->(HostilePlist::xml_nested(180_000, open => "<array\n>",
                                   close => '')),
     400, qr/nested too deeply/],
    ['XML: <array\n> x 180,000 as a report', '/mdm/connect',
     $report->(X => HostilePlist::xml_nested(180_000, open => "<array\n>",
                                             close => '')),
     400, qr/nested too deeply/],
    (map {
        my ($label, $open) = @$_;
        ["XML: 33 levels of $label", '/mdm/checkin',
         $A->(HostilePlist::xml_nested(32, open => $open)), 400,
         qr/nested too deeply/]
     } ['<array\t>', "<array\t>"], ['<array\r>', "<array\r>"],
       ['<array >', '<array >'], ['<dict\n>', "<dict\n>"],
       ['<array a=">">', '<array a=">">'],
       ['<array\r\n  x="1">', "<array\r\n  x=\"1\">"]),
    ['XML: </array> in comments, 50,000 levels', '/mdm/checkin',
     $A->(HostilePlist::xml_nested(50_000,
                                   open => '<array><!--</array></dict>-->')),
     400, qr/nested too deeply/],
    ['XML: </array> in CDATA, 40 levels', '/mdm/checkin',
     $A->(HostilePlist::xml_nested(40,
            open => '<array><string><![CDATA[</array>]]></string>')),
     400, qr/nested too deeply/],
    ['XML: </array> in <?...?>, 40 levels', '/mdm/checkin',
     $A->(HostilePlist::xml_nested(40, open => '<array><?x </array>?>')),
     400, qr/nested too deeply/],
    ['XML: nesting behind an empty root <dict/>', '/mdm/checkin',
     qq{<plist><dict/><key>a</key>} . HostilePlist::xml_nested(32), 400,
     qr/nested too deeply/],
    ['XML: an unterminated comment', '/mdm/checkin',
     $A->('<!-- ' . ('<array>' x 1000)), 400,
     qr/not a property list: unterminated comment/],
    ['XML: a NUL in a tag name', '/mdm/checkin',
     $A->("<array\0x>" . ('<array>' x 40)), 400, qr/NUL in a tag name/],
    ['XML: 100,001 elements', '/mdm/checkin',
     HostilePlist::xml_message(MessageType => 'Nope', UDID => 'UDID-A',
         X => '<array>' . ('<true/>' x (100_000 - 7)) . '</array>'),
     400, qr/too many elements/],
    ['XML: 400,000 entities in one string', '/mdm/checkin',
     $A->('<string>' . ('&lt;' x 400_000) . '</string>'), 400,
     qr/too many entities/],
    ['body over mdm_max_body checkin (default 64k), Content-Length',
     '/capped/checkin', $A->('<string>' . ('x' x 100_000) . '</string>'),
     413, qr/body of \d+ bytes is over "mdm_max_body checkin=65536"/],
    ['body over mdm_max_body checkin, chunked', '/capped/checkin',
     chunked($A->('<string>' . ('x' x 100_000) . '</string>')), 413,
     qr/body of \d+ bytes is over "mdm_max_body checkin=65536"/,
     { no_length => 1, headers => { 'Transfer-Encoding' => 'chunked' } }],
    ['report over mdm_max_body report=256k', '/capped/connect',
     $report->(Pad => 'x' x 300_000), 413,
     qr/body of \d+ bytes is over "mdm_max_body report=262144"/],
    ['report over mdm_max_body report=256k, chunked', '/capped/connect',
     chunked($report->(Pad => 'x' x 300_000)), 413,
     qr/over "mdm_max_body report=262144"/,
     { no_length => 1, headers => { 'Transfer-Encoding' => 'chunked' } }],
);

my $pids = workers();
ok $pids =~ /^\d+$/, "one worker ($pids)";

for my $row (@rows) {
    my ($name, $path, $body, $status, $log, $o) = @$row;
    my $state = $t->redis_state;
    my $events = $t->events_len;
    $t->mark_log;
    my $t0 = time;
    my $r = $t->put($path, $body, cert => 'dev1', %{ $o // {} });
    my $dt = time - $t0;
    my $size = length($body) < 10_000 ? length($body) . ' bytes'
             : int(length($body) / 1024) . ' KB';
    is $r->{status}, $status, "$name ($size): $status";
    ok $dt < 2, sprintf('%s: answered in %.2f s', $name, $dt);
    ok $t->wait_for_log($log, 2), "$name: logged" or diag $t->log_since_mark;
    my @lines = grep { /mdm: \d{3} / } split /\n/, $t->log_since_mark;
    is scalar(@lines), 1, "$name: one line";
    is workers(), $pids, "$name: same worker";
    $t->state_unchanged($state, "$name: Redis unchanged");
    is $t->events_len, $events, "$name: no event";
}

# What the tokenizer skips is not counted; the bound is exact.
my @ok = (
    ['32 levels, <array\n> spelling', '/mdm/checkin', 'UDID-B',
     HostilePlist::xml_nested(31, open => "<array\n>", close => "</array\n>"),
     200],
    ['<dict> x 40 inside CDATA', '/mdm/checkin', 'UDID-C',
     '<string><![CDATA[' . ('<dict>' x 40) . ']]></string>', 200],
    ['<array> x 40 inside a comment', '/mdm/checkin', 'UDID-D',
     '<string>a<!--' . ('<array>' x 40) . '-->b</string>', 200],
    ['<dict> x 40 inside <?...?>', '/mdm/checkin', 'UDID-E',
     '<?pi ' . ('<dict>' x 40) . '?><string>x</string>', 200],
    ['empty <dict/> x 1,000 do not nest', '/mdm/checkin', 'UDID-F',
     '<array>' . ('<dict/>' x 1000) . '</array>', 200],
);
for my $row (@ok) {
    my ($name, $path, $udid, $x, $status) = @$row;
    my $r = $t->put($path, HostilePlist::authenticate_with($udid, $x),
                    cert => "dev-$udid");
    is $r->{status}, $status, "$name: $status";
    is $t->redis->hget("mdm:{$udid}:enr:$udid", 'type'), 'Device',
        "$name: stored";
}

$t->mark_log;
my $r = $t->put('/mdm/checkin', HostilePlist::xml_message(
    MessageType => 'Nope', UDID => 'UDID-A',
    X => '<array>' . ('<true/>' x (100_000 - 8)) . '</array>'), cert => 'dev1');
is $r->{status}, 400, '100,000 elements: through the scan and libplist';
ok $t->wait_for_log(qr/unknown MessageType/, 2),
    '100,000 elements: refused only for its MessageType';

# A report of 1.5 MB is within report=2m (the default), while a check-in of
# the same size is not within checkin=64k.
$r = $t->put('/mdm/connect', $report->(Pad => 'x' x 1_500_000), cert => 'dev1');
is $r->{status}, 200, 'a 1.5 MB report is within the default report limit';
$r = $t->put('/capped/checkin', $A->('<string>' . ('x' x 1_500_000)
             . '</string>'), cert => 'dev1');
is $r->{status}, 413, 'a 1.5 MB check-in is not within the default limit';

is workers(), $pids, 'the same worker served everything';

# mdm_max_body syntax
$t->write_conf($t->conf(locations => '        location = /x { mdm_max_body '
                        . "checkin=0; mdm_checkin; }\n"));
like $t->nginx_test, qr/mdm_max_body: invalid parameter "checkin=0"/,
    'mdm_max_body checkin=0 refused by nginx -t';
$t->write_conf($t->conf(locations => '        location = /x { mdm_max_body '
                        . "size=1k; mdm_checkin; }\n"));
like $t->nginx_test, qr/mdm_max_body: invalid parameter "size=1k"/,
    'unknown mdm_max_body parameter refused';

$t->finish;
done_testing;
