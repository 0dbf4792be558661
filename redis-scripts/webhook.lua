#!lua name=mdm_webhook
--
-- The webhook deliverer's backlog (webhookd/mdm-webhookd).
--
-- mdm:events is capped (events_maxlen, MAXLEN ~): Redis trims entries
-- whether a consumer group has read them or not. So the deliverer does not
-- keep its work in the group's pending list: mdm_webhook_take reads new
-- entries with XREADGROUP, copies the device events among them to the
-- deliverer's own stream mdm:webhook:backlog and XACKs them, in one atomic
-- step. The group is only the read position (it survives restarts); the
-- backlog holds everything not yet answered 2xx or dead-lettered, and is
-- bounded by max_backlog (at the bound take moves nothing: mdm:events then
-- buffers, and loses its oldest entries once past its own cap; the loss is
-- detected and counted as a gap). mdm_webhook_done deletes delivered
-- entries, mdm_webhook_dead moves given-up ones to the bounded dead-letter
-- list. Raw payloads are not copied: the deliverer reads them at delivery
-- time from the enrollment and result hashes (README, "Webhooks").
--
-- Keys are always passed in KEYS; see redis-scripts/KEYS.md.

local VERSION = '1'

-- the device events a webhook carries (mdm:events also has `push`)
local DELIVER = { Authenticate = true, TokenUpdate = true, CheckOut = true,
                  SetBootstrapToken = true, GetBootstrapToken = true,
                  UserAuthenticate = true, DeclarativeManagement = true,
                  GetToken = true, Report = true }

local function version()
    return VERSION
end

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- flat [k1, v1, k2, v2...] reply -> table
local function kv(a)
    local t = {}
    for i = 1, #a - 1, 2 do
        t[a[i]] = a[i + 1]
    end
    return t
end

-- stream ids compare as two integers
local function id_less(a, b)
    local a1, a2 = string.match(a, '^(%d+)-(%d+)$')
    local b1, b2 = string.match(b, '^(%d+)-(%d+)$')
    if not a1 or not b1 then
        return false
    end
    a1, b1 = tonumber(a1), tonumber(b1)
    if a1 ~= b1 then
        return a1 < b1
    end
    return tonumber(a2) < tonumber(b2)
end

--[[
FCALL mdm_webhook_take 4 mdm:events mdm:webhook:backlog mdm:webhook:stats
      mdm:webhook:lock:<group>
      <group> <consumer> <count> <max_backlog> <start id for a new group>
      <nonce> <lock ttl ms> <takeover 0|1>
(the lock key and its arguments are optional)
Reply: { moved, read, backlog length, gap, full }: gap is the number of
entries trimmed from mdm:events before the group read them (-1: some, how
many unknown; counted once, in stats gaps and lost), full is 1 when the
backlog is at its bound (nothing read).
]]
local function take(keys, args)
    local ev, bl, st, lock = keys[1], keys[2], keys[3], keys[4]
    local group, consumer = args[1], args[2]
    local count = tonumber(args[3]) or 100
    local maxb = tonumber(args[4]) or 1000000
    local start = args[5] or '$'
    -- one deliverer per group: the lock holds the process's nonce; a new
    -- process takes over (takeover 1 on its first call), the old one is
    -- told on its next call and stops
    if lock then
        local nonce, ttl, takeover = args[6], tonumber(args[7]) or 10000,
                                     args[8]
        local cur = redis.call('GET', lock)
        if cur and cur ~= nonce and takeover ~= '1' then
            return redis.error_reply('LOCKED another mdm-webhookd took over '
                                     .. 'group ' .. group .. ' (' .. cur .. ')')
        end
        redis.call('SET', lock, nonce, 'PX', ttl)
    end
    local n = redis.call('XLEN', bl)
    if n >= maxb then
        redis.call('HINCRBY', st, 'full', 1)
        return { 0, 0, n, 0, 1 }
    end
    if count > maxb - n then
        count = maxb - n
    end
    -- the group (created on first use) and whether trimming overtook it
    local gap = 0
    local groups = redis.pcall('XINFO', 'GROUPS', ev)
    local last, read
    if type(groups) == 'table' and not groups.err then
        for _, g in ipairs(groups) do
            local gi = kv(g)
            if gi.name == group then
                last = gi['last-delivered-id']
                read = gi['entries-read']
            end
        end
    end
    if not last then
        -- MKSTREAM: a group created before the first event exists must
        -- not start after it. ENTRIESREAD: what the group counts as read
        -- (everything for '$', what was trimmed before for '0'), so that
        -- entries-read stays exact for the gap check below
        local added, len = 0, 0
        if redis.call('EXISTS', ev) == 1 then
            local si = kv(redis.call('XINFO', 'STREAM', ev))
            added, len = si['entries-added'] or 0, si.length or 0
        end
        local er = added
        if start ~= '$' then
            er = added - len
        end
        redis.call('XGROUP', 'CREATE', ev, group, start, 'MKSTREAM',
                   'ENTRIESREAD', er)
    else
        -- trimming (MAXLEN) passed the group's position when the oldest
        -- entry left is newer than it: what was added and neither read
        -- nor still there was lost
        local si = kv(redis.call('XINFO', 'STREAM', ev))
        local first = si['first-entry']
        if type(first) == 'table' and first[1] and id_less(last, first[1]) then
            local lost = -1
            if type(read) == 'number' and type(si['entries-added']) == 'number'
            then
                lost = si['entries-added'] - read - si.length
            end
            if lost ~= 0
               and redis.call('HGET', st, 'gap_id:' .. group) ~= first[1] then
                redis.call('HSET', st, 'gap_id:' .. group, first[1],
                           'gap_ms', now_ms())
                redis.call('HINCRBY', st, 'gaps', 1)
                if lost > 0 then
                    redis.call('HINCRBY', st, 'lost', lost)
                end
                gap = lost
            end
        end
    end
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer,
                         'COUNT', count, 'STREAMS', ev, '>')
    if not r or not r[1] then
        return { 0, 0, n, gap, 0 }
    end
    local entries = r[1][2]
    local ids = {}
    local moved = 0
    for _, e in ipairs(entries) do
        ids[#ids + 1] = e[1]
        local f = e[2]
        if f then
            local t = kv(f)
            if DELIVER[t.type] then
                redis.call('XADD', bl, '*', 'sid', e[1], unpack(f))
                moved = moved + 1
            end
        end
    end
    if #ids > 0 then
        redis.call('XACK', ev, group, unpack(ids))
    end
    if moved > 0 then
        redis.call('HINCRBY', st, 'taken', moved)
    end
    return { moved, #ids, n + moved, gap, 0 }
end

--[[
FCALL mdm_webhook_done 2 mdm:webhook:backlog mdm:webhook:stats <id>...
Deletes delivered backlog entries; reply: how many were still there.
]]
local function done(keys, args)
    if #args == 0 then
        return 0
    end
    local n = redis.call('XDEL', keys[1], unpack(args))
    redis.call('HINCRBY', keys[2], 'delivered', n)
    redis.call('HSET', keys[2], 'delivered_ms', now_ms())
    return n
end

--[[
FCALL mdm_webhook_dead 3 mdm:webhook:backlog mdm:webhook:dead
      mdm:webhook:stats <max dead> <id> <record> [<id> <record>...]
Moves given-up entries to the dead-letter list (newest first, the last
<max dead> kept); reply: how many were moved.
]]
local function dead(keys, args)
    local bl, dl, st = keys[1], keys[2], keys[3]
    local maxd = tonumber(args[1]) or 10000
    local n = 0
    for i = 2, #args - 1, 2 do
        if redis.call('XDEL', bl, args[i]) == 1 then
            redis.call('LPUSH', dl, args[i + 1])
            n = n + 1
        end
    end
    if n > 0 then
        redis.call('LTRIM', dl, 0, maxd - 1)
        redis.call('HINCRBY', st, 'dead', n)
    end
    return n
end

--[[
FCALL_RO mdm_webhook_stats 3 mdm:webhook:backlog mdm:webhook:dead
      mdm:webhook:stats
Reply: flat field/value list: the counters, backlog and dead lengths.
]]
local function stats(keys)
    local r = redis.call('HGETALL', keys[3])
    r[#r + 1] = 'backlog'
    r[#r + 1] = redis.call('XLEN', keys[1])
    r[#r + 1] = 'dead_len'
    r[#r + 1] = redis.call('LLEN', keys[2])
    return r
end

redis.register_function{ function_name = 'mdm_webhook_version',
                         callback = version, flags = { 'no-writes' } }
redis.register_function('mdm_webhook_take', take)
redis.register_function('mdm_webhook_done', done)
redis.register_function('mdm_webhook_dead', dead)
redis.register_function{ function_name = 'mdm_webhook_stats',
                         callback = stats, flags = { 'no-writes' } }
