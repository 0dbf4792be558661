#!lua name=mdm

--[[
Redis Functions for the MDM server: the device path (called by the nginx
module, one FCALL per request) and the admin API (redis-cli, mdmctl).
Key space: KEYS.md next to this file. Load with:
  redis-cli -x FUNCTION LOAD REPLACE < redis-scripts/mdm.lua
Bump VERSION whenever a function's arguments or replies change; the module
refuses to serve (503) against another version.
]]

local VERSION = '1'

local RESULT_TTL = 604800          -- seconds; mdm:conf result_ttl overrides
local EVENTS_MAXLEN = 100000       -- mdm:conf events_maxlen overrides
local CERT_WARN_DAYS = 30          -- mdm:conf cert_warn_days overrides

local FINISHED = { Acknowledged = true, Error = true,
                   CommandFormatError = true }

-- Apple check-in key -> enrollment hash field
local FIELDS = {
    Token = 'token', PushMagic = 'push_magic', UnlockToken = 'unlock_token',
    AwaitingConfiguration = 'awaiting_configuration',
    UserShortName = 'user_short_name', UserLongName = 'user_long_name',
    NotOnConsole = 'not_on_console', SerialNumber = 'serial',
    Model = 'model', ModelName = 'model_name', ProductName = 'product',
    OSVersion = 'os_version', BuildVersion = 'build_version',
    DeviceName = 'device_name', IMEI = 'imei', MEID = 'meid',
}

-- Appends the message's known keys, as hash fields, to an HSET list.
local function add_fields(h, f)
    for k, v in pairs(f) do
        local field = FIELDS[k]
        if field then
            h[#h + 1] = field
            h[#h + 1] = v
        end
    end
end

local AUTH_FIELDS = { 'serial', 'model', 'model_name', 'product',
                      'os_version', 'build_version', 'device_name', 'imei',
                      'meid' }

-- keys ---------------------------------------------------------------------

local function k_enr(d, e) return 'mdm:{' .. d .. '}:enr:' .. e end
local function k_users(d) return 'mdm:{' .. d .. '}:users' end
local function k_q(d, e) return 'mdm:{' .. d .. '}:q:' .. e end
local function k_nn(d, e) return 'mdm:{' .. d .. '}:nn:' .. e end
local function k_res(d, e, u)
    return 'mdm:{' .. d .. '}:res:' .. e .. ':' .. u
end
local function k_cmd(u) return 'mdm:cmd:' .. u end
local function k_cmdt(u) return 'mdm:cmdt:' .. u end

local function device_of(e) return string.match(e, '^[^:]+') end

-- helpers ------------------------------------------------------------------

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- mdm:conf, read once per call (entry points reset it)
local CONF_FIELDS = { 'result_ttl', 'events_maxlen', 'cert_warn_days' }
local conf_cache

local function conf_reset() conf_cache = nil end

local function conf(field, default)
    if not conf_cache then
        local v = redis.call('HMGET', 'mdm:conf', unpack(CONF_FIELDS))
        conf_cache = {}
        for i, f in ipairs(CONF_FIELDS) do
            conf_cache[f] = tonumber(v[i])
        end
    end
    return conf_cache[field] or default
end

local function int(n) return string.format('%d', n) end

local function event(fields)
    redis.call('XADD', 'mdm:events', 'MAXLEN', '~',
               conf('events_maxlen', EVENTS_MAXLEN), '*', unpack(fields))
end

-- queue item meta: status|notnow_count|notnow_ms|enqueue_ms|expires_ms
local function meta_parse(s)
    if not s then
        return nil, 0, 0, 0, 0
    end
    local st, c, nms, ems, xms =
        string.match(s, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if not st then
        return s, 0, 0, 0, 0          -- a finished target: status only
    end
    return st, tonumber(c) or 0, tonumber(nms) or 0, tonumber(ems) or 0,
           tonumber(xms) or 0
end

local function meta(st, c, nms, ems, xms)
    return st .. '|' .. int(c) .. '|' .. int(nms) .. '|' .. int(ems) .. '|'
           .. int(xms)
end

-- One target fewer holds the command; the body goes with the last one.
local function release(u, ttl, refs)
    local ck = k_cmd(u)
    if not refs then
        return
    end
    if tonumber(refs) <= 1 then
        redis.call('DEL', ck)
        redis.call('EXPIRE', k_cmdt(u), ttl)
    else
        redis.call('HINCRBY', ck, 'refs', -1)
    end
end

local function store_result(d, e, u, status, raw, ms, rt, ttl, extra)
    local rk = k_res(d, e, u)
    redis.call('HSET', rk, 'status', status, 'ms', int(ms),
               'raw', raw or '', 'request_type', rt or '')
    if extra then
        redis.call('HSET', rk, unpack(extra))
    end
    redis.call('EXPIRE', rk, ttl)
end

-- Takes an item out of a queue and records why: the result, and the final
-- status in the command's target table.
-- removed: the caller took the item out of the queue already; nn: whether
-- the channel has NotNow'd items (nil: unknown).
local function finish_item(d, e, u, status, raw, ms, ttl, removed, nn)
    local cmd = redis.call('HMGET', k_cmd(u), 'request_type', 'refs')
    -- a finished target keeps only its final status
    redis.call('HSET', k_cmdt(u), e, status)
    if not removed then
        redis.call('ZREM', k_q(d, e), u)
    end
    if nn ~= false then
        redis.call('SREM', k_nn(d, e), u)
    end
    release(u, ttl, cmd[2])
    store_result(d, e, u, status, raw, ms, cmd[1], ttl)
end

local function clear_queue(d, e, status, ms, ttl)
    local q = k_q(d, e)
    local uuids = redis.call('ZRANGE', q, 0, -1)
    for _, u in ipairs(uuids) do
        finish_item(d, e, u, status, '', ms, ttl)
    end
    redis.call('DEL', q, k_nn(d, e))
    return #uuids
end

-- The next command due: priority, then age; skips items answered NotNow in
-- this session and drops expired ones with an Expired result.
local function next_command(d, e, ms, ttl, skip)
    local q, nn = k_q(d, e), k_nn(d, e)
    local start = 0
    while true do
        local uuids = redis.call('ZRANGE', q, start, start + 15)
        if #uuids == 0 then
            return nil
        end
        local removed = 0
        for _, u in ipairs(uuids) do
            if not skip or redis.call('SISMEMBER', nn, u) == 0 then
                local st, c, nms, ems, xms =
                    meta_parse(redis.call('HGET', k_cmdt(u), e))
                local cmd = redis.call('HMGET', k_cmd(u), 'body',
                                       'request_type')
                if xms > 0 and xms <= ms then
                    finish_item(d, e, u, 'Expired', '', ms, ttl, false, skip)
                    removed = removed + 1
                elseif not cmd[1] then
                    finish_item(d, e, u, 'Missing', '', ms, ttl, false, skip)
                    removed = removed + 1
                else
                    if st ~= 'Sent' then
                        redis.call('HSET', k_cmdt(u), e,
                                   meta('Sent', c, nms, ems, xms))
                    end
                    return u, cmd[1], cmd[2]
                end
            end
        end
        start = start + #uuids - removed
    end
end

local function has(flags, f) return string.find(flags, f, 1, true) ~= nil end

-- last_seen_ms on every request; the index is ordered by last check-in,
-- which keeps a ZADD off the command path.
local function seen(d, e, ms, checkin)
    redis.call('HSET', k_enr(d, e), 'last_seen_ms', int(ms))
    if checkin then
        redis.call('ZADD', 'mdm:enrollments', ms, e)
    end
end

--[[
The certificate check every request but Authenticate passes: the device
channel must be bound to this certificate. User channels ride on their
device's binding. Returns nil when fine, else the reason.
]]
local function check_binding(d, sha, certkey, flags, ms)
    local dk = k_enr(d, d)
    local h = redis.call('HMGET', dk, 'cert', 'cert_expiring')
    local bound = h[1]
    if bound == sha then
        return nil, h[2]
    end
    local owner = redis.call('GET', certkey)
    if owner and owner ~= d then
        return 'certificate is bound to another device (' .. owner .. ')'
    end
    if not bound then
        if has(flags, 'm') and not owner
           and redis.call('EXISTS', dk) == 1 then
            redis.call('HSET', dk, 'cert', sha)
            redis.call('SET', certkey, d)
            event({ 'type', 'MigrationBind', 'id', d, 'ms', int(ms),
                    'cert', sha })
            return nil, h[2]
        end
        return 'device has not authenticated with this certificate'
    end
    return 'certificate is not the one bound to this device'
end

-- Records the certificate's expiry; an event when it enters the window.
local function cert_expiry(d, not_after, ms, was)
    if not_after <= 0 then
        return
    end
    local dk = k_enr(d, d)
    local warn = conf('cert_warn_days', CERT_WARN_DAYS) * 86400000
    local expiring = (not_after * 1000 - ms) < warn
    if expiring and was ~= '1' then
        redis.call('HSET', dk, 'cert_expiring', '1',
                   'cert_not_after_ms', int(not_after * 1000))
        event({ 'type', 'CertificateExpiring', 'id', d, 'ms', int(ms),
                'not_after_ms', int(not_after * 1000) })
    elseif not expiring and was ~= '0' then
        redis.call('HSET', dk, 'cert_expiring', '0',
                   'cert_not_after_ms', int(not_after * 1000))
    end
end

local function refuse(status, reason)
    return { status, '', '', reason, '', '' }
end

local OK = { 200, '', '', '', '', '' }

-- device path ---------------------------------------------------------------

--[[
FCALL mdm_checkin 3 <enr key> <cert key> mdm:events
      <MessageType> <E> <D> <channel> <flags> <cert not-after s> <cert sha256>
      [<Apple key> <value>]...
flags: r = allow re-Authenticate with another certificate, m = migration
(bind unbound enrollments), a = accept UserAuthenticate.
]]
local function checkin(keys, args)
    conf_reset()
    local mt, e, d, channel, flags = args[1], args[2], args[3], args[4], args[5]
    local not_after, sha = tonumber(args[6]) or 0, args[7]
    local enr, certkey = keys[1], keys[2]
    local ms = now_ms()
    local ttl = conf('result_ttl', RESULT_TTL)
    local f = {}
    for i = 8, #args - 1, 2 do
        f[args[i]] = args[i + 1]
    end

    if mt == 'Authenticate' then
        if e ~= d then
            return refuse(400, 'Authenticate on a user channel')
        end
        local owner = redis.call('GET', certkey)
        if owner and owner ~= d then
            return refuse(403, 'certificate is bound to another device ('
                               .. owner .. ')')
        end
        local old = redis.call('HMGET', enr, 'cert', 'enabled')
        if old[1] and old[1] ~= sha and old[2] == '1'
           and not has(flags, 'r') then
            event({ 'type', 'RebindRefused', 'id', d, 'ms', int(ms),
                    'cert', sha, 'bound', old[1] })
            return refuse(403, 'enabled enrollment re-authenticated with '
                               .. 'another certificate (mdm_allow_rebind off)')
        end
        if old[1] and old[1] ~= sha then
            redis.call('DEL', 'mdm:cert:' .. old[1])
        end
        redis.call('SET', certkey, d)

        -- a new enrollment starts clean: queues, user channels, tokens
        for _, u in ipairs(redis.call('SMEMBERS', k_users(d))) do
            clear_queue(d, u, 'Cleared', ms, ttl)
            redis.call('HSET', k_enr(d, u), 'enabled', '0')
        end
        clear_queue(d, d, 'Cleared', ms, ttl)
        redis.call('HDEL', enr, 'bootstrap_token', 'cert_expiring',
                   unpack(AUTH_FIELDS))

        local h = { 'type', channel, 'cert', sha, 'enabled', '0',
                    'topic', f.Topic or '', 'authenticate_ms', int(ms) }
        add_fields(h, f)
        h[#h + 1] = 'raw_authenticate'
        h[#h + 1] = f.Raw or ''
        redis.call('HSET', enr, unpack(h))
        cert_expiry(d, not_after, ms)
        seen(d, e, ms, true)
        event({ 'type', mt, 'id', e, 'ms', int(ms) })
        return OK
    end

    local why, was = check_binding(d, sha, certkey, flags, ms)
    if why then
        return refuse(403, why)
    end
    cert_expiry(d, not_after, ms, was)

    if mt == 'TokenUpdate' then
        local h = { 'type', channel, 'enabled', '1',
                    'token_update_ms', int(ms) }
        add_fields(h, f)
        if e ~= d then
            h[#h + 1] = 'user'
            h[#h + 1] = string.sub(e, #d + 2)
            redis.call('SADD', k_users(d), e)
        end
        h[#h + 1] = 'topic'
        h[#h + 1] = f.Topic
        h[#h + 1] = 'raw_token_update'
        h[#h + 1] = f.Raw
        redis.call('HSET', enr, unpack(h))
        redis.call('HINCRBY', enr, 'token_updates', 1)
        -- a fresh token supersedes what APNs said about the old one
        redis.call('HDEL', enr, 'token_dead_ms', 'token_bad')

    elseif mt == 'CheckOut' then
        redis.call('HSET', enr, 'enabled', '0', 'checkout_ms', int(ms))
        if e == d then
            for _, u in ipairs(redis.call('SMEMBERS', k_users(d))) do
                redis.call('HSET', k_enr(d, u), 'enabled', '0')
            end
        end

    elseif mt == 'SetBootstrapToken' then
        if e ~= d then
            return refuse(400, 'SetBootstrapToken on a user channel')
        end
        if f.BootstrapToken and #f.BootstrapToken > 0 then
            redis.call('HSET', enr, 'bootstrap_token', f.BootstrapToken)
        else
            redis.call('HDEL', enr, 'bootstrap_token')
        end
        if f.AwaitingConfiguration then
            redis.call('HSET', enr, 'awaiting_configuration',
                       f.AwaitingConfiguration)
        end

    elseif mt == 'GetBootstrapToken' then
        seen(d, e, ms, true)
        event({ 'type', mt, 'id', e, 'ms', int(ms) })
        local t = redis.call('HGET', k_enr(d, d), 'bootstrap_token') or ''
        return { 200, 'bootstrap', t, '', '', '' }

    elseif mt == 'UserAuthenticate' then
        if e == d then
            return refuse(400, 'UserAuthenticate without UserID')
        end
        event({ 'type', mt, 'id', e, 'ms', int(ms) })
        if not has(flags, 'a') then
            return refuse(410, 'UserAuthenticate declined '
                               .. '(mdm_user_authenticate decline)')
        end
        if f.DigestResponse then
            return OK
        end
        return { 200, 'digest', '', '', '', '' }

    else
        return refuse(400, 'unsupported MessageType')
    end

    seen(d, e, ms, true)
    event({ 'type', mt, 'id', e, 'ms', int(ms) })
    return OK
end

--[[
FCALL mdm_report 3 <enr key> <cert key> mdm:events
      Report <E> <D> <channel> <flags> <cert not-after s> <cert sha256>
      <Status> <CommandUUID> <raw body>
Stores the report and returns the next command, atomically.
]]
local function report(keys, args)
    conf_reset()
    local e, d, flags = args[2], args[3], args[5]
    local not_after, sha = tonumber(args[6]) or 0, args[7]
    local status, u, raw = args[8], args[9], args[10]
    local enr, certkey = keys[1], keys[2]
    local ms = now_ms()
    local ttl = conf('result_ttl', RESULT_TTL)

    local why, was = check_binding(d, sha, certkey, flags, ms)
    if why then
        return refuse(403, why)
    end
    -- the device channel exists once bound; a user channel after its
    -- TokenUpdate
    if e ~= d and redis.call('EXISTS', enr) == 0 then
        return refuse(403, 'no enrollment with this id; TokenUpdate first')
    end
    cert_expiry(d, not_after, ms, was)

    local q = k_q(d, e)
    local ev = { 'type', 'Report', 'id', e, 'ms', int(ms), 'status', status }

    -- items NotNow'd in this session (one lookup, used twice)
    local has_nn = false
    if status == 'Idle' then
        -- a new session: NotNow'd items are due again
        redis.call('DEL', k_nn(d, e))
    else
        has_nn = redis.call('EXISTS', k_nn(d, e)) == 1
    end

    if FINISHED[status] then
        ev[#ev + 1] = 'uuid'
        ev[#ev + 1] = u
        if redis.call('ZREM', q, u) == 1 then
            finish_item(d, e, u, status, raw, ms, ttl, true, has_nn)
        elseif redis.call('EXISTS', k_res(d, e, u)) == 0 then
            -- unknown or already finished: kept, marked, and tolerated
            store_result(d, e, u, status, raw, ms, '', ttl, { 'unknown', '1' })
            ev[#ev + 1] = 'unknown'
            ev[#ev + 1] = '1'
        end

    elseif status == 'NotNow' then
        ev[#ev + 1] = 'uuid'
        ev[#ev + 1] = u
        if redis.call('ZSCORE', q, u) then
            local ct = k_cmdt(u)
            local _, c, _, ems, xms = meta_parse(redis.call('HGET', ct, e))
            redis.call('HSET', ct, e, meta('NotNow', c + 1, ms, ems, xms))
            redis.call('SADD', k_nn(d, e), u)
            has_nn = true
        end
    end

    seen(d, e, ms)

    local nu, body, rt = next_command(d, e, ms, ttl, has_nn)
    if nu then
        ev[#ev + 1] = 'next'
        ev[#ev + 1] = nu
    end
    event(ev)

    if nu then
        return { 200, 'command', body, '', nu, rt or '' }
    end
    return OK
end

-- admin API -----------------------------------------------------------------

local function scan_command(body)
    if not string.find(body, '<plist', 1, true) then
        return nil, nil, 'the command is not an XML property list'
    end
    local u = string.match(body,
        '<key>%s*CommandUUID%s*</key>%s*<string>%s*([^<]-)%s*</string>')
    local rt = string.match(body,
        '<key>%s*RequestType%s*</key>%s*<string>%s*([^<]-)%s*</string>')
    if not u or u == '' then
        return nil, nil, 'the command has no CommandUUID string'
    end
    if not string.match(u, '^[%w%-%._]+$') or #u > 128 then
        return nil, nil, 'CommandUUID has invalid characters'
    end
    if not rt or rt == '' or not string.find(body, '<key>Command</key>', 1,
                                             true) then
        return nil, nil, 'the command has no Command.RequestType string'
    end
    return u, rt
end

-- Variadic calls go in slices: Lua's unpack() has a limit (~8000).
local CHUNK = 1000

local function slice(t, i, j)
    local out = {}
    for k = i, j do
        out[#out + 1] = t[k]
    end
    return out
end

-- for part in parts(ids): the ids in slices of at most CHUNK.
local function parts(ids)
    local i = 1 - CHUNK
    return function()
        i = i + CHUNK
        if i <= #ids then
            return slice(ids, i, math.min(i + CHUNK - 1, #ids))
        end
    end
end

-- Push requests for ids not already pending (coalescing), in one pass.
local function push_requests(ids)
    local n = 0
    for part in parts(ids) do
        local pending = redis.call('SMISMEMBER', 'mdm:push:pending',
                                   unpack(part))
        local new = {}
        for k, e in ipairs(part) do
            if pending[k] == 0 then
                new[#new + 1] = e
            end
        end
        if #new > 0 then
            redis.call('SADD', 'mdm:push:pending', unpack(new))
            redis.call('RPUSH', 'mdm:push:q', unpack(new))
            n = n + #new
        end
    end
    return n
end

-- nil when every id is enrolled, else the first unknown one.
local function unknown_id(ids)
    for part in parts(ids) do
        local keys = {}
        for k, e in ipairs(part) do
            local d = device_of(e)
            if not d then
                return e
            end
            keys[k] = k_enr(d, e)
        end
        if redis.call('EXISTS', unpack(keys)) ~= #keys then
            for k, e in ipairs(part) do
                if redis.call('EXISTS', keys[k]) == 0 then
                    return e
                end
            end
        end
    end
    return nil
end

--[[
FCALL mdm_enqueue 0 <command plist> <priority 0-9> <expires s|0> <nopush 0|1>
      <id>...
Queues one command (stored once) for every id; all or nothing.
Returns { CommandUUID, targets queued, push requests written }.
]]
local function enqueue(keys, args)
    conf_reset()
    local body, prio, exp, nopush = args[1], tonumber(args[2]),
                                    tonumber(args[3]), args[4]
    if not body or #args < 5 then
        return redis.error_reply('usage: mdm_enqueue 0 <plist> <priority> '
                                 .. '<expires-seconds> <nopush> <id>...')
    end
    if not prio or prio < 0 or prio > 9 or prio % 1 ~= 0 then
        return redis.error_reply('priority must be an integer 0-9')
    end
    if not exp or exp < 0 or exp % 1 ~= 0 then
        return redis.error_reply('expiry must be whole seconds, 0 for none')
    end
    local u, rt, err = scan_command(body)
    if not u then
        return redis.error_reply(err)
    end

    local ck, ct = k_cmd(u), k_cmdt(u)
    local existing = redis.call('HGET', ck, 'body')
    if existing and existing ~= body then
        return redis.error_reply('CommandUUID ' .. u
                                 .. ' is already queued with another body')
    end

    -- validate everything before writing anything
    local ids = slice(args, 5, #args)
    local given = {}
    for _, e in ipairs(ids) do
        if given[e] then
            return redis.error_reply('id ' .. e .. ' given twice')
        end
        given[e] = true
    end
    local bad = unknown_id(ids)
    if bad then
        return redis.error_reply('unknown enrollment id ' .. bad)
    end
    if existing or redis.call('EXISTS', ct) == 1 then
        for part in parts(ids) do
            local had = redis.call('HMGET', ct, unpack(part))
            for k, e in ipairs(part) do
                if had[k] then
                    return redis.error_reply('CommandUUID ' .. u
                                             .. ' was already queued for ' .. e)
                end
            end
        end
    end

    local ms = now_ms()
    local n = #ids
    local seq = redis.call('INCR', 'mdm:seq')
    local score = (9 - prio) * 1e13 + seq
    local m = meta('Queued', 0, 0, ms, exp > 0 and ms + exp * 1000 or 0)

    if existing then
        redis.call('HINCRBY', ck, 'refs', n)
    else
        redis.call('HSET', ck, 'body', body, 'request_type', rt,
                   'ms', int(ms), 'refs', n, 'priority', prio,
                   'expires_ms', exp > 0 and int(ms + exp * 1000) or '0')
    end
    redis.call('PERSIST', ct)

    for _, e in ipairs(ids) do
        redis.call('ZADD', k_q(device_of(e), e), score, u)
    end
    -- per target state lives with the command: one field per target
    for part in parts(ids) do
        local fv = {}
        for _, e in ipairs(part) do
            fv[#fv + 1] = e
            fv[#fv + 1] = m
        end
        redis.call('HSET', ct, unpack(fv))
    end
    local pushes = nopush ~= '1' and push_requests(ids) or 0

    event({ 'type', 'Enqueue', 'uuid', u, 'request_type', rt,
            'targets', n, 'ms', int(ms) })
    return { u, n, pushes }
end

-- FCALL mdm_push 0 <id>... : push requests only (coalesced).
local function push(keys, args)
    local bad = unknown_id(args)
    if bad then
        return redis.error_reply('unknown enrollment id ' .. bad)
    end
    return push_requests(args)
end

-- The enrollment id argument and its device, or an error reply.
local function id_arg(args, usage)
    local e = args[1]
    local d = e and device_of(e)
    if not d then
        return nil, nil, redis.error_reply('usage: ' .. usage)
    end
    return e, d
end

-- FCALL_RO mdm_queue 0 <id> : { uuid, request_type, status, notnow_count,
-- age_s, priority, expires_in_s }...
local function queue(keys, args)
    local e, d, err = id_arg(args, 'mdm_queue 0 <id>')
    if err then
        return err
    end
    local ms = now_ms()
    local out = {}
    for _, u in ipairs(redis.call('ZRANGE', k_q(d, e), 0, -1)) do
        local st, c, _, ems, xms = meta_parse(redis.call('HGET', k_cmdt(u), e))
        local cmd = redis.call('HMGET', k_cmd(u), 'request_type', 'priority')
        out[#out + 1] = { u, cmd[1] or '', st or '', c,
                          math.floor((ms - ems) / 1000), tonumber(cmd[2]) or 0,
                          xms > 0 and math.floor((xms - ms) / 1000) or -1 }
    end
    return out
end

-- FCALL mdm_cancel 0 <id> <uuid> : 1 when the item was queued.
local function cancel(keys, args)
    conf_reset()
    local e, d, err = id_arg(args, 'mdm_cancel 0 <id> <uuid>')
    local u = args[2]
    if err or not u then
        return err or redis.error_reply('usage: mdm_cancel 0 <id> <uuid>')
    end
    if not redis.call('ZSCORE', k_q(d, e), u) then
        return 0
    end
    local ms = now_ms()
    finish_item(d, e, u, 'Canceled', '', ms, conf('result_ttl', RESULT_TTL))
    event({ 'type', 'Cancel', 'id', e, 'uuid', u, 'ms', int(ms) })
    return 1
end

-- FCALL mdm_clear 0 <id> : number of items removed.
local function clear(keys, args)
    conf_reset()
    local e, d, err = id_arg(args, 'mdm_clear 0 <id>')
    if err then
        return err
    end
    local ms = now_ms()
    local n = clear_queue(d, e, 'Canceled', ms, conf('result_ttl', RESULT_TTL))
    event({ 'type', 'Clear', 'id', e, 'count', n, 'ms', int(ms) })
    return n
end

-- FCALL_RO mdm_result 0 <id> <uuid> : flat field/value list, or nil.
local function result(keys, args)
    local e, d, err = id_arg(args, 'mdm_result 0 <id> <uuid>')
    local u = args[2]
    if err or not u then
        return err or redis.error_reply('usage: mdm_result 0 <id> <uuid>')
    end
    local r = redis.call('HGETALL', k_res(d, e, u))
    if #r == 0 then
        local m = redis.call('ZSCORE', k_q(d, e), u)
                  and redis.call('HGET', k_cmdt(u), e)
        if m then
            local st, c = meta_parse(m)
            return { 'status', st, 'notnow_count', int(c) }
        end
        return nil
    end
    return r
end

-- FCALL_RO mdm_command_status 0 <uuid> : { id, status }... for every target.
local function command_status(keys, args)
    local u = args[1]
    if not u then
        return redis.error_reply('usage: mdm_command_status 0 <uuid>')
    end
    local out = {}
    local t = redis.call('HGETALL', k_cmdt(u))
    for i = 1, #t, 2 do
        out[#out + 1] = { t[i], meta_parse(t[i + 1]) or 'Unknown' }
    end
    return out
end

-- FCALL_RO mdm_enrollments 0 [offset] [count] : most recently seen first,
-- { id, type, enabled, topic, last_seen_ms, queue_length }...
local function enrollments(keys, args)
    local off = tonumber(args[1]) or 0
    local count = tonumber(args[2]) or 100
    local out = {}
    for _, e in ipairs(redis.call('ZREVRANGE', 'mdm:enrollments', off,
                                  off + count - 1)) do
        local d = device_of(e)
        local h = redis.call('HMGET', k_enr(d, e), 'type', 'enabled', 'topic',
                             'last_seen_ms')
        out[#out + 1] = { e, h[1] or '', h[2] or '', h[3] or '', h[4] or '',
                          redis.call('ZCARD', k_q(d, e)) }
    end
    return out
end

-- FCALL_RO mdm_enrollment 0 <id> : the enrollment hash; secrets and raw
-- messages (binary plists: HGET the raw_* fields) by their length only.
local SECRET = { unlock_token = true, bootstrap_token = true,
                 raw_authenticate = true, raw_token_update = true }

local function enrollment(keys, args)
    local e, d, err = id_arg(args, 'mdm_enrollment 0 <id>')
    if err then
        return err
    end
    local h = redis.call('HGETALL', k_enr(d, e))
    for i = 1, #h, 2 do
        if SECRET[h[i]] then
            h[i + 1] = '(' .. #h[i + 1] .. ' bytes)'
        end
    end
    if #h > 0 then
        h[#h + 1] = 'queue_length'
        h[#h + 1] = tostring(redis.call('ZCARD', k_q(d, e)))
        h[#h + 1] = 'users'
        h[#h + 1] = table.concat(redis.call('SMEMBERS', k_users(d)), ' ')
    end
    return h
end

redis.register_function{ function_name = 'mdm_version',
    callback = function() return VERSION end, flags = { 'no-writes' } }
redis.register_function('mdm_checkin', checkin)
redis.register_function('mdm_report', report)
redis.register_function('mdm_enqueue', enqueue)
redis.register_function('mdm_push', push)
redis.register_function('mdm_cancel', cancel)
redis.register_function('mdm_clear', clear)
redis.register_function{ function_name = 'mdm_queue', callback = queue,
    flags = { 'no-writes' } }
redis.register_function{ function_name = 'mdm_result', callback = result,
    flags = { 'no-writes' } }
redis.register_function{ function_name = 'mdm_command_status',
    callback = command_status, flags = { 'no-writes' } }
redis.register_function{ function_name = 'mdm_enrollments',
    callback = enrollments, flags = { 'no-writes' } }
redis.register_function{ function_name = 'mdm_enrollment',
    callback = enrollment, flags = { 'no-writes' } }
