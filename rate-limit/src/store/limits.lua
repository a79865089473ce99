-- Every policy of a layer with several, for one or more clients, in one
-- atomic step: the transcription of rate-limit/src/window.rs (keep the two
-- in step; tests run both on the same sequences). A layer of one policy
-- uses single.lua.
-- KEYS: per client, one per policy (on a cluster: one client, one hash
-- slot; a client comes once). ARGV: now in µs (-1: Redis' TIME), the
-- number of policies P, then per policy algorithm (0 fixed, 1 sliding, 2
-- GCRA, 3 concurrency), limit, window ms (a concurrency limit: the lease
-- TTL); then per client (in the order of KEYS) its number of requests n and
-- their n costs, evaluated in order as if each came alone; clients share no
-- key, so they do not see each other. With a concurrency limit among the
-- policies each cost is followed by the request's lease id.
-- Returns per request (clients in order): admitted (1/0), then per policy
-- remaining, reset ms, retry ms (-1: never), blocked ms.
-- Values: fixed window "count:end ms", sliding window "index:current:previous",
-- GCRA "TAT µs"; each key's expiry is when its state stops counting. A
-- concurrency limit: a sorted set of lease ids scored by their expiry (ms),
-- trimmed of the expired ones on each read; an admitted request (of a cost
-- above 0) adds its lease, expiring a lease TTL from now, and the key
-- expires with its last lease (no key without a TTL); a release is a ZREM.
-- Per key one read (one MGET for every key of the call) and one write:
-- SET ... PXAT when its state changed, else PEXPIREAT ... LT (a key
-- left without expiry, or with one past what its state needs, gets it). A
-- value this script cannot read as its own is deleted (or overwritten); an
-- out-of-range one (a window in the future, a count above the limit, a TAT
-- past the tolerance) is rewritten in range. A bare count (a one-policy
-- layer's fixed window, the window's end in the key's expiry) is read with
-- its PEXPIRETIME and rewritten.
local MAX = 9007199254740992
local TAT_FLOOR = 1125899906842624
local NEVER = -1
local floor, min, max, format, match = math.floor, math.min, math.max, string.format, string.match

local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function cdiv(a, b)
  local q = idiv(a, b)
  if q * b < a then
    q = q + 1
  end
  return q
end

local function int(v)
  local n = tonumber(v)
  if n and n >= 0 and n < MAX and n == floor(n) then
    return n
  end
  return nil
end

-- A fixed-window count above the limit `L` is a full window: the pipelined
-- counter (rate-limit/src/store/redis.rs) leaves rejected requests of cost 1
-- counted, and a higher limit's count is a full window of the lower one.
-- At or above 2^50 (TAT_FLOOR in window.rs) it is another algorithm's state
-- (a GCRA TAT in µs), left above the limit: replaced.
local function full(x, L)
  if x and x > L and x < TAT_FLOOR then
    return L
  end
  return x
end

local now_us = tonumber(ARGV[1])
if now_us < 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now = idiv(now_us, 1000)
local np = tonumber(ARGV[2])
local algo, limit, window, interval, tol = {}, {}, {}, {}, {}
-- Per request: its cost, and with a concurrency limit its lease id.
local step = 1
for i = 1, np do
  algo[i] = tonumber(ARGV[3 * i])
  limit[i] = tonumber(ARGV[3 * i + 1])
  window[i] = tonumber(ARGV[3 * i + 2])
  if algo[i] == 2 then
    interval[i] = max(cdiv(window[i] * 1000, limit[i]), 1)
    tol[i] = limit[i] * interval[i]
  elseif algo[i] == 3 then
    step = 2
  end
end

-- The sliding window's wait (ms) until a request of cost k passes.
local function slide_wait(L, W, elapsed, weighted, after, prev, k)
  if k > L then return NEVER end
  if weighted + after + k <= L then return 0 end
  if after + k <= L then
    local q = W
    if prev > 0 then q = idiv((L - after - k) * W, prev) end
    return max(max(W - q, 0) - elapsed, 0)
  end
  local q = W
  if after > 0 then q = idiv((L - k) * W, after) end
  return W - elapsed + max(W - q, 0)
end

-- One policy's answer on state (a, b, c) (a nil: empty): admits, remaining,
-- reset, retry, blocked, and the next state. Fixed: count, end ms; sliding:
-- index, current, previous; GCRA: TAT.
local function check(i, a, b, c, cost)
  local L, W = limit[i], window[i]
  local kind = algo[i]
  if kind == 0 then
    local count, exp = 0, now + W
    if a and b > now then
      count = a
      if b < exp then exp = b end
    end
    local admits = cost <= L and count + cost <= L
    local after = count
    if admits then after = count + cost end
    local left = exp - now
    local retry = 0
    if not admits then
      if cost > L then retry = NEVER else retry = left end
    end
    local blocked = 0
    if after >= L then blocked = left end
    -- after <= L: admitted ones stay within, a rejected one leaves count.
    return admits, L - after, left, retry, blocked, after, exp
  elseif kind == 1 then
    local index = idiv(now, W)
    local elapsed = now - index * W
    local cur, prev = 0, 0
    if a then
      if a >= index then
        cur, prev = b, c
      elseif a + 1 == index then
        prev = b
      end
    end
    cur, prev = min(cur, L), min(prev, L)
    local weighted = cdiv(prev * (W - elapsed), W)
    local admits = cost <= L and weighted + cur + cost <= L
    local after = cur
    if admits then after = cur + cost end
    local retry = 0
    if not admits then retry = slide_wait(L, W, elapsed, weighted, after, prev, cost) end
    return admits, max(L - (weighted + after), 0), W - elapsed, retry,
      slide_wait(L, W, elapsed, weighted, after, prev, 1), index, after, prev
  else
    local iv, t = interval[i], tol[i]
    local tat = min(max(a or 0, now_us), now_us + t)
    local admits = cost <= L and tat + cost * iv - now_us <= t
    local after = tat
    if admits then after = tat + cost * iv end
    local blocked = cdiv(max(after + iv - now_us - t, 0), 1000)
    local retry = 0
    if not admits then
      if cost > L then retry = NEVER else retry = cdiv(max(after + cost * iv - now_us - t, 0), 1000) end
    end
    return admits, idiv(t - (after - now_us), iv), cdiv(after - now_us, 1000), retry, blocked, after
  end
end

-- A concurrency limit (window.rs' `leases`): held leases a, the first
-- expiring at b. A request of a cost above 0 takes one; never "blocked" (a
-- slot frees whenever a response ends).
local function check_leases(i, a, b, cost)
  local L, held, first = limit[i], a or 0, b or 0
  if held == 0 then first = 0 end
  local need = min(cost, 1)
  local admits = held + need <= L
  local after = held
  if admits then after = held + need end
  if held == 0 and after > 0 then first = now + window[i] end
  local reset = max(first - now, 0)
  local retry = 0
  if not admits then retry = min(max(reset, 1), 1000) end
  return admits, L - after, reset, retry, 0, after, first
end

-- Every key's value at once (false: none, or not a string).
local vals = {}
for s = 1, #KEYS, 1000 do
  local part = redis.call('MGET', unpack(KEYS, s, min(s + 999, #KEYS)))
  for k = 1, #part do
    vals[s + k - 1] = part[k]
  end
end

local out, n = {}, 0
-- Per policy: the state (sa, sb, sc), what to write
-- (act: 'set', 'del' or nil), one request's answers (r*) and next state (n*).
local sa, sb, sc, act = {}, {}, {}, {}
-- Per concurrency limit: the lease ids granted to the client at hand.
local grants = {}
local ra, rr, rs, rt, rb, na, nb, nc = {}, {}, {}, {}, {}, {}, {}, {}

-- Policy i's state (a, b, c; a nil: none) in v, the value of key, and what
-- to write back ('set', 'del' or nil).
local function read(i, key, v)
  if algo[i] == 3 then
    -- A key that is not a sorted set is not this policy's: replaced.
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'zset' then
      if kind ~= 'none' then redis.call('DEL', key) end
      return nil
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first == 0 then return nil end
    return redis.call('ZCARD', key), tonumber(first[2])
  end
  if not v then
    return nil
  end
  local L, W, kind = limit[i], window[i], algo[i]
  if kind == 0 then
    local x, y = match(v, '^(%d+):(%d+)$')
    local act
    if x then
      -- Digits only: a number; at most 2^53 to count exactly.
      x, y = tonumber(x), tonumber(y)
      if x >= MAX or y >= MAX then x = nil end
      x = full(x, L)
    else
      -- A bare count: the earlier form, the window's end in the expiry.
      x = full(int(v), L)
      if x and x <= L then
        y, act = redis.call('PEXPIRETIME', key), 'set'
        if y < 0 then y = now + W end
      end
    end
    -- Still above the limit: another algorithm's state (see `full`).
    if not (x and y) or x > L then
      return nil, nil, nil, 'del'
    end
    -- A window ending past one window from now is counted in one from now.
    if y > now + W then
      return x, now + W, nil, 'set'
    end
    return x, y, nil, act
  elseif kind == 1 then
    local x, y, z = match(v, '^(%d+):(%d+):(%d+)$')
    x, y, z = int(x), int(y), int(z)
    if not (x and y and z) then
      return nil, nil, nil, 'del'
    end
    -- A window in the future (the clock stepped back) is the current one.
    local index = idiv(now, W)
    if x > index or y > L or z > L then
      return min(x, index), min(y, L), min(z, L), 'set'
    end
    return x, y, z
  end
  local x = int(v)
  if not x then
    return nil, nil, nil, 'del'
  end
  if x > now_us + tol[i] then
    return now_us + tol[i], nil, nil, 'set'
  end
  return x
end

-- Writes policy i's state (a, b, c) to key: 'set' it, 'del' the key, or
-- (nil) only bring its expiry down to what the state needs.
local function write(i, key, a, b, c, act)
  if algo[i] == 3 then
    -- The leases granted in this call, expiring a lease TTL from now; the
    -- key lives as long as its last lease.
    local ids = grants[i]
    if ids and #ids > 0 then
      local exp = format('%d', now + window[i])
      for k = 1, #ids do
        redis.call('ZADD', key, exp, ids[k])
      end
      local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      redis.call('PEXPIREAT', key, format('%d', max(tonumber(last[2]), now + window[i])))
      grants[i] = nil
    end
    return
  end
  if act == 'del' and a == nil then
    redis.call('DEL', key)
    return
  end
  if a == nil then
    -- Nothing that counts: nothing to write.
    return
  end
  local kind, v, exp = algo[i]
  if kind == 0 then
    v, exp = format('%d:%d', a, b), b
  elseif kind == 1 then
    v, exp = format('%d:%d:%d', a, b, c), (a + 2) * window[i]
  else
    v, exp = format('%d', a), cdiv(a, 1000)
  end
  -- Formatted here: a number would be formatted by Redis with '%.17g'.
  exp = format('%d', max(exp, 1))
  if act == 'set' then
    redis.call('SET', key, v, 'PXAT', exp)
  else
    redis.call('PEXPIREAT', key, exp, 'LT')
  end
end

-- The client: its keys are KEYS[base + 1 .. base + P], its requests' costs
-- ARGV[first .. last].
local function client(base, first, last)
  for i = 1, np do
    sa[i], sb[i], sc[i], act[i] = read(i, KEYS[base + i], vals[base + i])
  end
  for j = first, last, step do
    local cost = tonumber(ARGV[j])
    local all = true
    for i = 1, np do
      if algo[i] == 3 then
        ra[i], rr[i], rs[i], rt[i], rb[i], na[i], nb[i], nc[i] = check_leases(i, sa[i], sb[i], cost)
      else
        ra[i], rr[i], rs[i], rt[i], rb[i], na[i], nb[i], nc[i] = check(i, sa[i], sb[i], sc[i], cost)
      end
      if not ra[i] then all = false end
    end
    n = n + 1
    out[n] = all and 1 or 0
    for i = 1, np do
      local rem, reset, retry, blocked = rr[i], rs[i], rt[i], rb[i]
      if all then
        sa[i], sb[i], sc[i], act[i] = na[i], nb[i], nc[i], 'set'
        if algo[i] == 3 and cost > 0 then
          grants[i] = grants[i] or {}
          grants[i][#grants[i] + 1] = ARGV[j + 1]
        end
      elseif ra[i] then
        -- Not charged: this policy's view without the request.
        local _
        if algo[i] == 3 then
          _, rem, reset, retry, blocked = check_leases(i, sa[i], sb[i], 0)
        else
          _, rem, reset, retry, blocked = check(i, sa[i], sb[i], sc[i], 0)
        end
      end
      out[n + 1], out[n + 2], out[n + 3], out[n + 4] = rem, reset, retry, blocked
      n = n + 4
    end
  end
  for i = 1, np do
    write(i, KEYS[base + i], sa[i], sb[i], sc[i], act[i])
  end
end

local j, base = 3 * np + 3, 0
while j <= #ARGV do
  local count = tonumber(ARGV[j])
  client(base, j + 1, j + count * step)
  j = j + count * step + 1
  base = base + np
end
return out
