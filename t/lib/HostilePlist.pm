package HostilePlist;

# Hostile property lists for the parser limits (t/19, the fuzz seeds):
# binary plists built byte by byte (nesting, shared references, cycles)
# and XML in the spellings libplist's tokenizer accepts.
#
#   HostilePlist::bin_nested(120_000)        # 1 MB, 120,000 nested arrays
#   HostilePlist::bin_bomb(8, 14)            # 8 levels x 14 references
#   HostilePlist::bin_cycle()                # an array containing itself
#   HostilePlist::xml_nested(32, open => "<array\n>")
#   HostilePlist::xml_message(X => $xml_value, MessageType => ...)

use strict;
use warnings;

our $TOPIC = 'com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9';

# ---- binary ----------------------------------------------------------------

sub _int_size {
    my ($n) = @_;
    return $n < 256 ? 1 : $n < 65536 ? 2 : 4;
}

sub _uint {
    my ($n, $size) = @_;
    return $size == 1 ? pack('C', $n) : $size == 2 ? pack('n', $n)
         : pack('N', $n);
}

# A binary plist from a list of objects, each [type, ...]: ['str', $s]
# (ASCII), ['array', @refs], ['dict', [@keyrefs], [@valrefs]]. Object 0 is
# the top; refs are object indexes.
sub bplist {
    my (@objs) = @_;
    my $refsize = _int_size(scalar @objs);
    my $body = 'bplist00';
    my @offsets;
    for my $o (@objs) {
        push @offsets, length $body;
        my ($type, @v) = @$o;
        if ($type eq 'str') {
            $body .= _marker(0x50, length $v[0]) . $v[0];
        } elsif ($type eq 'array') {
            $body .= _marker(0xa0, scalar @v)
                . join('', map { _uint($_, $refsize) } @v);
        } elsif ($type eq 'dict') {
            my ($k, $val) = @v;
            $body .= _marker(0xd0, scalar @$k)
                . join('', map { _uint($_, $refsize) } @$k, @$val);
        } else {
            die "bplist: unknown type $type";
        }
    }
    my $table = length $body;
    my $offsize = _int_size($table);
    $body .= join '', map { _uint($_, $offsize) } @offsets;
    $body .= "\0" x 6 . pack('CC', $offsize, $refsize)
        . pack('Q>', scalar @objs) . pack('Q>', 0) . pack('Q>', $table);
    return $body;
}

sub _marker {
    my ($type, $n) = @_;
    return pack('C', $type | $n) if $n < 15;
    my $size = $n < 256 ? 0 : $n < 65536 ? 1 : 2;
    return pack('CC', $type | 0xf, 0x10 | $size) . _uint($n, 1 << $size);
}

# The 8 objects of a check-in dict (index 0) whose key X refers to
# object 8, the first one the caller appends.
sub _message_objs {
    my ($udid) = @_;
    return (['dict', [1 .. 4], [5, 6, 7, 8]], ['str', 'MessageType'],
            ['str', 'Topic'], ['str', 'UDID'], ['str', 'X'],
            ['str', 'Authenticate'], ['str', $TOPIC],
            ['str', $udid // 'UDID-A']);
}

# A check-in whose X is $n arrays nested in each other (the innermost
# empty): libplist 2.2's binary reader recurses once per level.
sub bin_nested {
    my ($n, %o) = @_;
    my @objs = _message_objs($o{udid});
    push @objs, map { ['array', 8 + $_ + 1] } 0 .. $n - 2;
    push @objs, ['array'];
    return bplist(@objs);
}

# X is an array of $fan references to one array, which holds $fan
# references to the next, $levels deep: a few hundred bytes that decode to
# $fan ** $levels nodes.
sub bin_bomb {
    my ($levels, $fan, %o) = @_;
    my @objs = _message_objs($o{udid});
    for my $l (0 .. $levels - 1) {
        push @objs, ['array', (8 + $l + 1) x $fan];
    }
    push @objs, ['str', 'leaf'];
    return bplist(@objs);
}

# X is an array that contains itself.
sub bin_cycle {
    my (%o) = @_;
    my @objs = _message_objs($o{udid});
    push @objs, ['array', 8, 8];
    return bplist(@objs);
}

# ---- XML -----------------------------------------------------------------

our $HEAD = qq{<?xml version="1.0" encoding="UTF-8"?>\n}
    . qq{<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN"}
    . qq{ "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n}
    . qq{<plist version="1.0">\n};

# A check-in dict with raw XML values: xml_message(MessageType =>
# 'Authenticate', X => '<array/>'); plain values become <string>s, values
# starting with '<' are inserted as they are. With open => 0 the closing
# </dict></plist> is left off.
sub xml_message {
    my (@kv) = @_;
    my $s = "$HEAD<dict>\n";
    while (@kv) {
        my ($k, $v) = splice @kv, 0, 2;
        $v = "<string>$v</string>" unless $v =~ /^</;
        $s .= "<key>$k</key>$v\n";
    }
    return "$s</dict>\n</plist>\n";
}

# $n nested arrays as an XML value; open/close are the tag spellings; with
# close => '' the closing tags are left out.
sub xml_nested {
    my ($n, %o) = @_;
    my $open = $o{open} // '<array>';
    my $close = $o{close} // '</array>';
    return ($open x $n) . ($close x $n);
}

# An Authenticate for $udid whose key X holds $xml.
sub authenticate_with {
    my ($udid, $xml, @extra) = @_;
    return xml_message(MessageType => 'Authenticate', Topic => $TOPIC,
                       UDID => $udid, @extra, X => $xml);
}

1;
