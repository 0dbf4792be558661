#!/usr/bin/perl
# Declarations as the admin gives them (issue 10): mdm_ddm_check validates
# them against Apple's schemas (the block tools/gen-ddm-schema writes into
# mdm.lua is current), refuses bad ones with the key path, and the strict
# JSON parser and canonical encoder under it (jparse, jencode,
# ddm_parse_declaration: local functions, run here through EVAL of the
# library's own text) keep [] from {}, refuse what JSON forbids and give
# one text per content.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use MdmTest;

my $root = MdmTest::root();

# --- the generated schema is current ------------------------------------------
SKIP: {
    my $dm = $ENV{APPLE_DM}
             // "$root/../shared/data/apple-device-management";
    skip "no Apple schemas at $dm", 1 unless -d "$dm/declarative";
    my $out = `APPLE_DM='$dm' $root/tools/gen-ddm-schema --check 2>&1`;
    is $?, 0, 'the ddm schema block of mdm.lua matches Apple\'s YAML'
        or diag $out;
}

my $t = MdmTest->new(no_pki => 1);
my $r = $t->redis;

sub check {
    my ($json) = @_;
    my $out = eval { $r->fcall('mdm_ddm_check', 0, $json) };
    return $out // err($@);
}

# a Redis.pm error as Redis sent it
sub err {
    my ($e) = @_;
    $e =~ s/^\[\w+\] //;
    $e =~ s/,\s+at \S+ line \d+\.\n\z//;
    return $e;
}

# a declaration of type $type with payload text $payload (undef: none)
sub decl {
    my ($id, $type, $payload) = @_;
    return qq({"Type":"$type","Identifier":"$id")
           . (defined $payload ? qq(,"Payload":$payload) : '') . '}';
}

my $SU = 'com.apple.configuration.softwareupdate.enforcement.specific';
my $SUB = 'com.apple.configuration.management.status-subscriptions';
my $ACT = 'com.apple.activation.simple';
my $DATA = 'com.apple.asset.data';
my $su_ok = '{"TargetOSVersion":"17.1",'
            . '"TargetLocalDateTime":"2024-06-01T10:00:00"}';

# --- valid declarations ---------------------------------------------------------
my $before = $t->redis_state;
is check(decl('com.example.su', $SU, $su_ok)),
    qq({"declarations":[{"Identifier":"com.example.su","Type":"$SU",)
    . '"refs":[]}]}', 'softwareupdate.enforcement.specific';
is check(decl('sub1', $SUB, '{"StatusItems":[{"Name":"device.model.family"},'
                            . '{"Name":"softwareupdate.install-state"}]}')),
    qq({"declarations":[{"Identifier":"sub1","Type":"$SUB","refs":[]}]}),
    'status-subscriptions: an array of dictionaries';
is check('[' . decl('act1', $ACT,
                    '{"StandardConfigurations":["com.example.su","sub1",'
                    . '"com.example.su"],"Predicate":"TRUEPREDICATE"}')
         . ',' . decl('asset1', $DATA,
                      '{"Reference":{"DataURL":"https://x.example/d",'
                      . '"ContentType":"text/plain","Size":12,'
                      . '"Hash-SHA-256":"ab"},"Authentication":'
                      . '{"Type":"MDM"}}') . ']'),
    qq({"declarations":[{"Identifier":"act1","Type":"$ACT",)
    . '"refs":["com.example.su","sub1"]},'
    . qq({"Identifier":"asset1","Type":"$DATA","refs":[]}]}),
    'activation with StandardConfigurations (refs, once each), asset.data';
is check(decl('w1', 'com.apple.configuration.watch.enrollment',
              '{"EnrollmentProfileURL":"https://x.example/e",'
              . '"AnchorCertificateAssetReferences":["cert1","cert2"]}')),
    '{"declarations":[{"Identifier":"w1","Type":"com.apple.configuration.'
    . 'watch.enrollment","refs":["cert1","cert2"]}]}',
    'an array of asset references';
like check(decl('m1', 'com.apple.management.properties')),
    qr/"refs":\[\]/, 'no Payload where no key is required';
like check(decl('m2', 'com.apple.management.properties',
                '{"any":{"x":[1,null,true]},"other":"s"}')),
    qr/"Identifier":"m2"/, 'ANY keys of any type';
like check(qq({"Type":"$SU","Identifier":"su2","ServerToken":"given",)
           . qq("Payload":$su_ok})), qr/"su2"/, 'a ServerToken is ignored';
is $t->rcli_raw('FCALL_RO', 'mdm_ddm_check', 0, decl('x', $SU, $su_ok)),
    qq({"declarations":[{"Identifier":"x","Type":"$SU","refs":[]}]}\n),
    'FCALL_RO: no-writes';
$t->state_unchanged($before, 'checking writes nothing');

# --- refusals -------------------------------------------------------------------
my @bad = (
    [decl('a', 'com.apple.configuration.nope', '{}'),
     qr/^declaration a: Type: unknown declaration type com\.apple\.configuration\.nope/,
     'unknown type'],
    [decl('com.example.su', $SU, '{"TargetLocalDateTime":"x"}'),
     qr/^declaration com\.example\.su: Payload\.TargetOSVersion: required key missing/,
     'missing required key'],
    [decl('a', $SU, '{"TargetOSVersion":17,"TargetLocalDateTime":"x"}'),
     qr/Payload\.TargetOSVersion: wrong type: integer, want string/,
     'wrong type'],
    [decl('a', $DATA, '{"Reference":{"DataURL":"https://x"},'
                      . '"Authentication":{"Type":"Basic"}}'),
     qr/Payload\.Authentication\.Type: "Basic" is not one of MDM, None/,
     'value outside the rangelist'],
    [decl('a', $DATA, '{"Reference":{"DataURL":"https://x","Size":"12"}}'),
     qr/Payload\.Reference\.Size: wrong type: string, want integer/,
     'nested wrong type'],
    [decl('a', $DATA, '{"Reference":{"DataURL":"https://x","Size":1.5}}'),
     qr/Payload\.Reference\.Size: wrong type: real, want integer/,
     'a real for an integer'],
    [decl('a', $SUB, '{"StatusItems":[{"Name":"x"},{"Name":false}]}'),
     qr/Payload\.StatusItems\[1\]\.Name: wrong type: boolean, want string/,
     'wrong type in an array item'],
    [decl('a', $SUB, '{"StatusItems":[{}]}'),
     qr/Payload\.StatusItems\[0\]\.Name: required key missing/,
     'missing key in an array item'],
    [decl('com.example.su', $SU, '{"TargetOSVersion":"1","Foo":1,'
                                 . '"TargetLocalDateTime":"x"}'),
     qr/^declaration com\.example\.su: Payload\.Foo: unknown key for \Q$SU\E$/,
     'unknown payload key'],
    [decl('a', 'com.apple.configuration.passcode.settings',
          '{"MinimumLength":17}'),
     qr/Payload\.MinimumLength: 17 is out of range 0\.\.16/, 'out of range'],
    [decl('a', $ACT, '{"StandardConfigurations":["ok","b/c"]}'),
     qr/Payload\.StandardConfigurations\[1\]: reference holds '\/'/,
     'a reference that cannot be an Identifier'],
    [decl('x' x 65, $SU, $su_ok),
     qr/Identifier: longer than 64 octets/, 'identifier too long'],
    [decl('', $SU, $su_ok), qr/^declaration "": Identifier: empty$/,
     'empty identifier'],
    [decl('a/b', $SU, $su_ok), qr/declaration a\/b: Identifier: holds '\/'/,
     "identifier with '/'"],
    [decl('a..b', $SU, $su_ok), qr/Identifier: holds '\.\.'/,
     "identifier with '..'"],
    [decl('a\u0000b', $SU, $su_ok),
     qr/declaration "a\\u0000b": Identifier: holds a control character/,
     'identifier with an escaped NUL'],
    [qq({"Type":"$SU","Payload":$su_ok}),
     qr/^declaration: Identifier: required key missing/, 'no Identifier'],
    [qq({"Type":"$SU","Identifier":7,"Payload":$su_ok}),
     qr/Identifier: wrong type: integer, want string/, 'Identifier a number'],
    [qq({"Type":"$SU","Identifier":"a","Payload":$su_ok,"Extra":1}),
     qr/declaration a: Extra: unknown key \(a declaration has Identifier, Payload, ServerToken, Type\)/,
     'unknown top-level key'],
    [decl('a', $SU, '[]'),
     qr/declaration a: Payload: wrong type: array, want dictionary/,
     'Payload not an object'],
    [decl('a', $SU), qr/declaration a: Payload: required key missing/,
     'no Payload where keys are required'],
    ['not json', qr/^declarations: not JSON: unexpected 'n' at byte 0/,
     'not JSON'],
    ['', qr/not JSON: unexpected end of input at byte 0/, 'empty text'],
    [decl('a', $SU, $su_ok) . ' x',
     qr/not JSON: trailing garbage at byte \d+/, 'trailing garbage'],
    [('[' x 40) . (']' x 40), qr/not JSON: nested too deep at byte 32/,
     'depth bomb'],
    ['{"Type":"a","Type":"b"}',
     qr/not JSON: duplicate key "Type" at byte 12/, 'duplicate keys'],
    ['[' . decl('a', $SU, $su_ok) . ',' . decl('b', $SU, $su_ok) . ','
     . decl('a', $SU, $su_ok) . ']',
     qr/^declaration a: Identifier given twice \(items 0 and 2\)/,
     'duplicate identifiers in an array'],
    ['[' . decl('a', $SU, $su_ok) . ',' . decl('b', $SU, '{}') . ']',
     qr/^declaration b: Payload\.TargetLocalDateTime: required key missing/,
     'the bad one of an array named'],
    ['[1]', qr/^declaration \[0\]: not a JSON object/,
     'an array item not an object'],
    ['[]', qr/^declarations: an empty array/, 'an empty array'],
    ['[' . join(',', map { decl("d$_", $SU, $su_ok) } 1 .. 1001) . ']',
     qr/more than 1000 in one call/, 'more than 1000'],
    ['[' . join(',', (0) x 100001) . ']',
     qr/not JSON: too many values at byte \d+/, 'value bomb'],
);
$before = $t->redis_state;
for my $b (@bad) {
    like check($b->[0]), $b->[1], "refused: $b->[2]";
}
$t->state_unchanged($before, 'refusals write nothing');

# --- admin only -----------------------------------------------------------------
$r->acl('SETUSER', 'dev', 'on', '>dev-pw', 'resetkeys', '-@all', '+fcall',
        '+fcall_ro', '~*');
my $dev = Redis->new(sock => $t->redis_sock);
$dev->auth('dev', 'dev-pw');
like eval { $dev->fcall('mdm_ddm_check', 0, decl('a', $SU, $su_ok)) }
     // err($@),
    qr/NOPERM mdm_ddm_check is an admin function/, 'refused to a non-admin';

# --- the parser and the encoder --------------------------------------------------
my $src = $t->slurp("$root/redis-scripts/mdm.lua");
$src =~ s/^#!lua[^\n]*\n//;
$src = "local redis = setmetatable({ register_function = function() end },\n"
       . "    { __index = redis })\n" . $src . "\n";

# runs lua $code after the library's text (its locals in scope)
sub lua {
    my ($code, @args) = @_;
    my $out = eval { $r->eval($src . $code, 0, @args) };
    return $out // err($@);
}

my $RT = 'local v, e = jparse(ARGV[1]) '
         . "if v == nil then return 'ERR ' .. e end return jencode(v)";
sub rt { lua($RT, @_) }

my $CANON = 'local d, e = ddm_parse_declaration(ARGV[1]) '
            . "return d and d.canon or 'ERR ' .. e";
my $a = lua($CANON, qq({"Type":"$SU","Identifier":"c1","Payload":)
                    . '{"TargetOSVersion":"17.1","DetailsURL":"https://x/\u00e9",'
                    . '"TargetLocalDateTime":"2024-06-01T10:00:00"}}');
my $b = lua($CANON, qq(\n { "Payload" : { "TargetLocalDateTime" : )
                    . qq("2024-06-01T10:00:00",\r\n\t"DetailsURL":"https:\\/\\/x\\/\xc3\xa9", )
                    . qq("TargetOSVersion": "17.1" } , "Identifier": "c1",)
                    . qq( "ServerToken": "t9", "Type" : "$SU" }\n));
is $a, $b, 'the same content in another order and spacing: the same canon';
is $a, '{"Identifier":"c1","Payload":{"DetailsURL":"https://x/'
       . "\xc3\xa9" . '","TargetLocalDateTime":"2024-06-01T10:00:00",'
       . qq("TargetOSVersion":"17.1"},"Type":"$SU"}),
    'canon: sorted keys, no whitespace, no ServerToken, UTF-8 as such';
is lua($CANON, decl('m', 'com.apple.management.properties')),
    '{"Identifier":"m","Payload":{},"Type":"com.apple.management.properties"}',
    'no Payload: {}';

is rt('{"a":[],"b":{},"c":[{}],"d":[[]],"e":{"f":[]}}'),
    '{"a":[],"b":{},"c":[{}],"d":[[]],"e":{"f":[]}}', '[] and {} kept';
is rt('{"b":1,"a":2,"B":3,"_":4,"aa":5,"a b":6,"\u00e9":7,"":8}'),
    '{"":8,"B":3,"_":4,"a":2,"a b":6,"aa":5,"b":1,"' . "\xc3\xa9" . '":7}',
    'keys in byte order';
is rt('["\u00e9\u20ac\ud83d\ude00", "\u0041\/", "\"\\\\\b\f\n\r\t", "\u0001\u001f\u007f"]'),
    qq(["\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80","A/","\\"\\\\\\b\\f\\n\\r\\t",)
    . qq("\\u0001\\u001f\x7f"]),
    'escapes decoded; minimal escapes out';
my $u = rt('["\u00e9\ud83d\ude00"]');
is rt($u), $u, 'a round trip is stable';
is rt('[0, -0, 1.0, 1e2, -12, 0.1, 1.5e-7, 123456789012, 9007199254740993, '
      . '1e300, -2.5E+3, 3.141592653589793]'),
    '[0,0,1,100,-12,0.1,1.5e-07,123456789012,9007199254740992,1e+300,'
    . '-2500,3.141592653589793]', 'numbers';
is rt('[true,false,null]'), '[true,false,null]', 'literals';
is rt(" \t\n\r[ 1 ,\n 2 ] \n"), '[1,2]', 'JSON whitespace';

my @jbad = (
    ['"\ud800"', qr/lone surrogate at byte 1/, 'lone high surrogate'],
    ['"\ud800\u0041"', qr/lone surrogate/, 'high surrogate then no low'],
    ['"\udc00"', qr/lone surrogate/, 'lone low surrogate'],
    ['"\x"', qr/invalid escape at byte 1/, 'invalid escape'],
    ['"\u12g4"', qr/invalid \\u escape/, 'bad \u'],
    ["\"a\tb\"", qr/control character in string at byte 2/, 'raw tab'],
    ["\"a\x00b\"", qr/control character in string/, 'raw NUL'],
    ["\"\xc3\x28\"", qr/invalid UTF-8 at byte 1/, 'invalid UTF-8'],
    ["\"\xed\xa0\x80\"", qr/invalid UTF-8/, 'UTF-8 surrogate'],
    ["\"\xc0\xaf\"", qr/invalid UTF-8/, 'overlong UTF-8'],
    ['"abc', qr/unterminated string/, 'unterminated'],
    ['[01]', qr/leading zero in number at byte 1/, 'leading zero'],
    ['[1.]', qr/invalid number/, '1.'],
    ['[.5]', qr/unexpected '\.' at byte 1/, '.5'],
    ['[1e]', qr/invalid number/, '1e'],
    ['[1e999]', qr/number out of range/, 'overflow'],
    ['[NaN]', qr/unexpected 'N'/, 'NaN'],
    ['[1,]', qr/unexpected '\]' at byte 3/, 'trailing comma'],
    ['{"a":1,}', qr/expected a string key at byte 7/, 'trailing comma in {}'],
    ['{a:1}', qr/expected a string key at byte 1/, 'bare key'],
    ['{"a" 1}', qr/expected ':' at byte 5/, 'no colon'],
    ['[1 2]', qr/expected ',' or '\]' at byte 3/, 'no comma'],
    ['{"a":1 "b":2}', qr/expected ',' or '\}' at byte 7/, 'no comma in {}'],
    ["[1]\x0c", qr/trailing garbage at byte 3/, 'form feed is no whitespace'],
    ['{"a\u0000":1,"a\u0000":2}', qr/duplicate key "a\\u0000" at byte 13/,
     'duplicate keys after unescaping'],
    ['tru', qr/unexpected 't'/, 'tru'],
);
for my $b (@jbad) {
    like rt($b->[0]), $b->[1], "jparse refuses: $b->[2]";
}
like lua("local v, e = jparse(ARGV[1], 3) return e or 'ok'", '[[[1]]]'),
    qr/^ok$/, 'depth 3 allowed with max_depth 3';
like lua("local v, e = jparse(ARGV[1], 3) return e or 'ok'", '[[[[1]]]]'),
    qr/nested too deep at byte 3/, 'depth 4 refused';
like lua("local v, e = jparse(ARGV[1], 32, 3) return e or 'ok'", '[1,2,3]'),
    qr/too many values at byte 5/, 'the value bound counts every value';

# the representation
is lua(<<'LUA', '{"a":[1,{"b":null}],"c":{}}'), 'ok', 'JOBJ, JARR, JNULL, n';
local v = jparse(ARGV[1])
assert(getmetatable(v) == JOBJ and getmetatable(v.a) == JARR)
assert(v.a.n == 2 and #v.a == 2 and v.a[1] == 1)
assert(getmetatable(v.a[2]) == JOBJ and v.a[2].b == JNULL)
assert(getmetatable(v.c) == JOBJ and next(v.c) == nil)
local e = jparse('[]')
assert(getmetatable(e) == JARR and e.n == 0)
-- the comparator used where Redis' collation is not byte order
assert(bytes_lt('B', 'a') and not bytes_lt('a', 'B') and bytes_lt('a', 'ab')
       and bytes_lt('', 'a') and bytes_lt('\0', '\1') and bytes_lt('~', '\195')
       and not bytes_lt('ab', 'ab') and bytes_lt('aB', 'ab'))
return 'ok'
LUA
is lua(<<'LUA'), 'ok', 'decl fields';
local d = assert(ddm_parse_declaration('{"Type":"com.apple.configuration.'
    .. 'account.mail","Identifier":"m1","Payload":{"UserIdentityAssetReference"'
    .. ':"u1","IncomingServer":{"ServerType":"IMAP","HostName":"h",'
    .. '"AuthenticationMethod":"Password","AuthenticationCredentialsAsset'
    .. 'Reference":"p1"},"OutgoingServer":{"HostName":"h",'
    .. '"AuthenticationMethod":"None"}}}'))
assert(d.type == 'com.apple.configuration.account.mail' and d.kind
       == 'configuration' and d.identifier == 'm1')
assert(getmetatable(d.payload) == JOBJ and d.payload.IncomingServer.HostName
       == 'h')
assert(#d.refs == 2 and d.refs.n == 2)
local want = { p1 = true, u1 = true }
for i = 1, 2 do
    assert(want[d.refs[i]] and d.ref_kinds[i] == 'asset')
    assert(type(d.ref_types[i]) == 'table')
end
local a = assert(ddm_parse_declaration('{"Type":"com.apple.activation.simple",'
    .. '"Identifier":"a","Payload":{"StandardConfigurations":["m1"]}}'))
assert(a.kind == 'activation' and a.refs[1] == 'm1'
       and a.ref_kinds[1] == 'configuration' and a.ref_types[1] == false)
assert(DDM_STATUS_ITEMS['softwareupdate.install-state']
       and not DDM_STATUS_ITEMS['statusreason'])
local many = assert(ddm_parse_many('[{"Type":"com.apple.management.'
    .. 'properties","Identifier":"x"},{"Type":"com.apple.management.'
    .. 'properties","Identifier":"y"}]'))
assert(#many == 2 and many[2].identifier == 'y')
return 'ok'
LUA

done_testing;
