#!lua name=mdm_push
--
-- Reliable push list for the APNs sender (apnsd/mdm-apnsd).
--
-- Producers:   SADD mdm:push:pending E  and, only when that returned 1,
--              RPUSH mdm:push:q E       (or FCALL mdm_push_enqueue).
-- Sender NAME: mdm_push_claim moves ids from mdm:push:q to its processing
--              list mdm:push:proc:NAME (and out of mdm:push:pending) in one
--              atomic step; mdm_push_done records the outcome and removes
--              the id from the processing list; mdm_push_recover puts the
--              processing list of a dead sender (no mdm:push:alive:NAME)
--              back at the head of the queue. Sender names are registered
--              in the set mdm:push:senders so recovery needs no SCAN.
--
-- Keys are always passed in KEYS; nothing here derives a key from another.
-- See redis-scripts/KEYS.md and apnsd/README.md.

local VERSION = '1'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function events_maxlen(conf)
  local n = tonumber(redis.call('HGET', conf, 'events_maxlen'))
  if not n or n < 1 then n = 100000 end
  return n
end

-- Refreshes the heartbeat of sender NAME and registers the name in
-- mdm:push:senders. The heartbeat value is the process's nonce: a different
-- value means another process runs under the same name (the newer process
-- passes takeover = '1' until its first heartbeat, so the older one is the
-- one that gets the error).
local function beat(alive, senders, nonce, ttl, name, takeover)
  local old = redis.call('GET', alive)
  if old and old ~= nonce and takeover ~= '1' then
    return redis.error_reply('NAMECONFLICT another mdm-apnsd runs as ' .. name
                             .. ' (' .. old .. ')')
  end
  redis.call('SET', alive, nonce, 'PX', ttl)
  redis.call('SADD', senders, name)
  return nil
end

-- mdm_push_version() -> library version, checked by the sender at connect.
local function version()
  return VERSION
end

-- mdm_push_enqueue(KEYS: q, pending; ARGV: E...) -> number queued.
-- The producer protocol as one call: ids already pending are coalesced.
local function enqueue(keys, args)
  local n = 0
  for _, e in ipairs(args) do
    if redis.call('SADD', keys[2], e) == 1 then
      redis.call('RPUSH', keys[1], e)
      n = n + 1
    end
  end
  return n
end

-- mdm_push_beat(KEYS: alive, senders; ARGV: nonce, ttl_ms, name, takeover)
-- -> 1, or a NAMECONFLICT error
local function hb(keys, args)
  local err = beat(keys[1], keys[2], args[1], args[2], args[3], args[4])
  if err then return err end
  return 1
end

-- mdm_push_claim(KEYS: q, pending, proc, alive, senders;
--                ARGV: n, ttl_ms, nonce, name, takeover)
-- -> the ids taken (oldest first), also refreshing the heartbeat. They
-- leave mdm:push:pending in the same step, so an enqueue that arrives while
-- they are in flight queues a new push.
local function claim(keys, args)
  local n = tonumber(args[1])
  if not n or n < 1 or n > 1000 then
    return redis.error_reply('ERR claim count must be 1..1000')
  end
  local err = beat(keys[4], keys[5], args[3], args[2], args[4], args[5])
  if err then return err end
  local items = redis.call('LPOP', keys[1], n)
  if not items then return {} end
  redis.call('SREM', keys[2], unpack(items))
  redis.call('RPUSH', keys[3], unpack(items))
  return items
end

-- mdm_push_done(KEYS: proc, enr, events, stats, conf;
--               ARGV: E, count, token, result, reason, status, apns_id,
--                     timestamp_ms, topic, attempt, detail)
-- Records one outcome of a push of E and removes `count` occurrences of E
-- from the processing list (0 = the item stays, e.g. it will be retried).
--   result  ok | unregistered | bad_token | failed | retry | stopped |
--           gave_up | skipped
-- Enrollment hash (only if it exists and is a hash; token fields only while
-- the stored token is still the one that was pushed):
--   ok            push_ms, push_id, push_error = ''
--   unregistered  token_dead_ms = timestamp unless older than token_update_ms
--   bad_token     token_bad = 1
--   other (not skipped)  push_error = reason[: detail], push_error_ms
-- Stream mdm:events: type push id E result .. [reason ..] [status ..] ...
-- Hash mdm:push:stats: sent (APNs answers and transport errors), RESULT,
-- RESULT:REASON (reason is a short code; detail carries the text).
-- Returns 1 when a token_dead_ms / token_bad flag was set, else 0.
local function done(keys, args)
  local proc, enr, events, stats, conf = keys[1], keys[2], keys[3], keys[4], keys[5]
  local id, count, token, result = args[1], tonumber(args[2]) or 0, args[3] or '', args[4]
  local reason, status, apns_id = args[5] or '', args[6] or '', args[7] or ''
  local ts, topic, attempt = args[8] or '', args[9] or '', args[10] or ''
  local detail = args[11] or ''
  if not id or not result then
    return redis.error_reply('ERR usage: id count token result ...')
  end
  if count > 0 then
    redis.call('LREM', proc, count, id)
  end
  local now = now_ms()
  local flagged = 0
  if result ~= 'skipped' and redis.call('TYPE', enr).ok == 'hash' then
    local same = token ~= '' and redis.call('HGET', enr, 'token') == token
    if result == 'ok' then
      redis.call('HSET', enr, 'push_ms', now, 'push_id', apns_id, 'push_error', '')
    else
      local perr = reason
      if detail ~= '' then perr = reason .. ': ' .. detail end
      redis.call('HSET', enr, 'push_error', perr, 'push_error_ms', now)
      if result == 'unregistered' and same then
        local t = tonumber(ts) or now
        local upd = tonumber(redis.call('HGET', enr, 'token_update_ms')) or 0
        if t >= upd then
          redis.call('HSET', enr, 'token_dead_ms', t)
          flagged = 1
        end
      elseif result == 'bad_token' and same then
        redis.call('HSET', enr, 'token_bad', 1)
        flagged = 1
      end
    end
  end
  local ev = { 'type', 'push', 'id', id, 'result', result }
  if reason ~= '' then ev[#ev + 1] = 'reason'; ev[#ev + 1] = reason end
  if status ~= '' then ev[#ev + 1] = 'status'; ev[#ev + 1] = status end
  if apns_id ~= '' then ev[#ev + 1] = 'apns_id'; ev[#ev + 1] = apns_id end
  if ts ~= '' then ev[#ev + 1] = 'timestamp'; ev[#ev + 1] = ts end
  if topic ~= '' then ev[#ev + 1] = 'topic'; ev[#ev + 1] = topic end
  if attempt ~= '' then ev[#ev + 1] = 'attempt'; ev[#ev + 1] = attempt end
  if detail ~= '' then ev[#ev + 1] = 'detail'; ev[#ev + 1] = detail end
  if flagged == 1 then ev[#ev + 1] = 'flagged'; ev[#ev + 1] = '1' end
  redis.call('XADD', events, 'MAXLEN', '~', events_maxlen(conf), '*', unpack(ev))
  if result ~= 'skipped' then
    redis.call('HINCRBY', stats, 'sent', 1)
  end
  redis.call('HINCRBY', stats, result, 1)
  if reason ~= '' then
    redis.call('HINCRBY', stats, result .. ':' .. reason, 1)
  end
  return flagged
end

-- mdm_push_topic(KEYS: stats, events, conf;
--                ARGV: topic, state, reason, name, detail)
-- A topic stopped (certificate rejected) or resumed by sender NAME:
-- mdm:push:stats field topic:TOPIC = "STATE [REASON] MS", and an event.
local function topic_state(keys, args)
  local topic, state, reason, name = args[1], args[2], args[3] or '', args[4] or ''
  local detail = args[5] or ''
  if not topic or not state then
    return redis.error_reply('ERR usage: topic state [reason] [name] [detail]')
  end
  local v = state
  if reason ~= '' then v = v .. ' ' .. reason end
  redis.call('HSET', keys[1], 'topic:' .. topic, v .. ' ' .. now_ms())
  local ev = { 'type', 'push_topic', 'topic', topic, 'result', state,
               'reason', reason, 'sender', name }
  if detail ~= '' then ev[#ev + 1] = 'detail'; ev[#ev + 1] = detail end
  redis.call('XADD', keys[2], 'MAXLEN', '~', events_maxlen(keys[3]), '*', unpack(ev))
  return 1
end

-- mdm_push_recover(KEYS: q, pending, proc, alive, stats, senders;
--                  ARGV: mode, name)
-- Puts the processing list of sender NAME back at the head of the queue,
-- oldest first; ids already pending again are not queued twice.
--   mode 'dead'   only if its heartbeat expired; then NAME is unregistered
--   mode 'leave'  always (a sender shutting down); NAME is unregistered and
--                 its heartbeat deleted
-- -> number of ids requeued, or -1 when the sender is alive.
local function recover(keys, args)
  local q, pending, proc, alive, stats, senders = keys[1], keys[2], keys[3],
                                                  keys[4], keys[5], keys[6]
  local mode, name = args[1], args[2]
  if mode ~= 'dead' and mode ~= 'leave' then
    return redis.error_reply('ERR mode must be dead or leave')
  end
  if mode == 'dead' and redis.call('EXISTS', alive) == 1 then
    return -1
  end
  local items = redis.call('LRANGE', proc, 0, -1)
  local n = 0
  for i = #items, 1, -1 do
    if redis.call('SADD', pending, items[i]) == 1 then
      redis.call('LPUSH', q, items[i])
      n = n + 1
    end
  end
  redis.call('DEL', proc)
  if mode == 'leave' then redis.call('DEL', alive) end
  if name then redis.call('SREM', senders, name) end
  if n > 0 then
    redis.call('HINCRBY', stats, 'recovered', n)
  end
  return n
end

-- mdm_push_stats(KEYS: q, pending, stats) -> flat list: queue, pending,
-- then every field of mdm:push:stats.
local function stats(keys)
  local out = { 'queue', redis.call('LLEN', keys[1]),
                'pending', redis.call('SCARD', keys[2]) }
  local h = redis.call('HGETALL', keys[3])
  for i = 1, #h do out[#out + 1] = h[i] end
  return out
end

redis.register_function{ function_name = 'mdm_push_version', callback = version,
                         flags = { 'no-writes' } }
redis.register_function('mdm_push_enqueue', enqueue)
redis.register_function('mdm_push_beat', hb)
redis.register_function('mdm_push_claim', claim)
redis.register_function('mdm_push_done', done)
redis.register_function('mdm_push_topic', topic_state)
redis.register_function('mdm_push_recover', recover)
redis.register_function{ function_name = 'mdm_push_stats', callback = stats,
                         flags = { 'no-writes' } }
