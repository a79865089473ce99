-- Every policy of a batch of requests of one or more clients, in one atomic
-- step: the transcription of rate-limit/src/window.rs (keep the two in step;
-- tests run both on the same sequences).
-- KEYS: per client, one per policy (on a cluster: one client, one hash
-- slot). ARGV: now in µs (-1: Redis' TIME), the number of policies P, then
-- per policy algorithm (0 fixed, 1 sliding, 2 GCRA), limit, window ms; then
-- per client (in the order of KEYS) its number of requests n and their n
-- costs. Each client's requests are evaluated in order, as if each came
-- alone; clients share no key, so they do not see each other.
-- Returns per request (clients in order): admitted (1/0), then per policy
-- remaining, reset ms, retry ms (-1: never), blocked ms.
-- Every key written gets an expiry (SET ... PXAT); a key this script cannot
-- read as its own is deleted, one without expiry (or with one past what its
-- state needs) gets one; a sliding window's future index is rewritten.
local MAX = 9007199254740992
local NEVER = -1

local function idiv(a, b)
  local q = math.floor(a / b)
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

local function fmt(n)
  return string.format('%.0f', n)
end

local function int(v)
  local n = tonumber(v)
  if n and n >= 0 and n < MAX and n == math.floor(n) then
    return n
  end
  return nil
end

local now_us = tonumber(ARGV[1])
if now_us < 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now = idiv(now_us, 1000)
local np = tonumber(ARGV[2])
local algo, limit, window = {}, {}, {}
for i = 1, np do
  algo[i] = tonumber(ARGV[3 * i])
  limit[i] = tonumber(ARGV[3 * i + 1])
  window[i] = tonumber(ARGV[3 * i + 2])
end

local function gcra_params(i)
  local interval = math.max(cdiv(window[i] * 1000, limit[i]), 1)
  return interval, limit[i] * interval
end

-- One policy's answer: admits, remaining, reset, retry, blocked, next state.
local function check(i, s, cost)
  local L, W = limit[i], window[i]
  if algo[i] == 0 then
    local count, exp = 0, now + W
    if s.k == 'f' and s.exp > now and s.exp <= now + W then
      count, exp = s.count, s.exp
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
    return admits, math.max(L - after, 0), left, retry, blocked, { k = 'f', count = after, exp = exp }
  elseif algo[i] == 1 then
    local index = idiv(now, W)
    local elapsed = now - index * W
    local cur, prev = 0, 0
    if s.k == 's' then
      if s.index >= index then
        cur, prev = s.cur, s.prev
      elseif s.index + 1 == index then
        cur, prev = 0, s.cur
      end
    end
    cur, prev = math.min(cur, L), math.min(prev, L)
    local weighted = cdiv(prev * (W - elapsed), W)
    local admits = cost <= L and weighted + cur + cost <= L
    local after = cur
    if admits then after = cur + cost end
    local function wait(c)
      if c > L then return NEVER end
      if weighted + after + c <= L then return 0 end
      if after + c <= L then
        local q = W
        if prev > 0 then q = idiv((L - after - c) * W, prev) end
        return math.max(math.max(W - q, 0) - elapsed, 0)
      end
      local q = W
      if after > 0 then q = idiv((L - c) * W, after) end
      return W - elapsed + math.max(W - q, 0)
    end
    local retry = 0
    if not admits then retry = wait(cost) end
    return admits, math.max(L - (weighted + after), 0), W - elapsed, retry, wait(1),
      { k = 's', index = index, cur = after, prev = prev }
  else
    local interval, tol = gcra_params(i)
    local tat = 0
    if s.k == 'g' then tat = s.tat end
    tat = math.min(math.max(tat, now_us), now_us + tol)
    local admits = cost <= L and tat + cost * interval - now_us <= tol
    local after = tat
    if admits then after = tat + cost * interval end
    local function wait(c)
      if c > L then return NEVER end
      return cdiv(math.max(after + c * interval - now_us - tol, 0), 1000)
    end
    local retry = 0
    if not admits then retry = wait(cost) end
    return admits, idiv(tol - (after - now_us), interval), cdiv(after - now_us, 1000), retry, wait(1),
      { k = 'g', tat = after }
  end
end

local out = {}

-- One client: its keys are KEYS[base + 1 .. base + P], its costs
-- ARGV[first .. last].
local function client(base, first, last)
  -- Read every policy's state.
  local st, repair, proper = {}, {}, {}
  for i = 1, np do
    local v = redis.pcall('GET', KEYS[base + i])
    local exp = redis.call('PEXPIRETIME', KEYS[base + i])
    local s = { k = 'e' }
    local foreign = false
    if type(v) == 'table' then
      foreign = true
    elseif v then
      if algo[i] == 0 then
        local c = int(v)
        -- Above the limit: not this policy's count (rejected requests are
        -- not counted), but another algorithm's state (a GCRA TAT) or a
        -- higher limit's: replaced.
        if c == nil or c > limit[i] then
          foreign = true
        elseif exp == -1 or exp > now + window[i] then
          -- Counted on, in a window of the right length from now.
          s = { k = 'f', count = c, exp = now + window[i] }
          repair[i] = true
          proper[i] = s.exp
        else
          s = { k = 'f', count = c, exp = exp }
        end
      elseif algo[i] == 1 then
        local a, b, c = string.match(v, '^(%d+):(%d+):(%d+)$')
        a, b, c = int(a), int(b), int(c)
        if a and b and c then
          -- A window in the future (the clock stepped back) is the current
          -- one, rewritten so.
          local rewrite = a > idiv(now, window[i])
          if rewrite then a = idiv(now, window[i]) end
          s = { k = 's', index = a, cur = b, prev = c }
          proper[i] = (a + 2) * window[i]
          repair[i] = rewrite and 'set' or exp == -1 or exp > proper[i]
        else
          foreign = true
        end
      else
        local t = int(v)
        if t then
          local _, tol = gcra_params(i)
          s = { k = 'g', tat = t }
          proper[i] = cdiv(math.min(t, now_us + tol), 1000)
          repair[i] = exp == -1 or exp > proper[i]
        else
          foreign = true
        end
      end
    end
    if foreign then
      repair[i] = 'del'
    end
    st[i] = s
  end

  local dirty = {}
  for j = first, last do
    local cost = tonumber(ARGV[j])
    local res, all = {}, true
    for i = 1, np do
      res[i] = { check(i, st[i], cost) }
      if not res[i][1] then all = false end
    end
    out[#out + 1] = all and 1 or 0
    for i = 1, np do
      local r = res[i]
      if all then
        st[i] = r[6]
        dirty[i] = true
      elseif r[1] then
        -- Not charged: this policy's view without the request.
        r = { true, check(i, st[i], 0) }
        r = { true, r[3], r[4], r[5], r[6] }
      end
      local retry = r[4]
      if r[1] then retry = 0 end
      out[#out + 1] = r[2]
      out[#out + 1] = r[3]
      out[#out + 1] = retry
      out[#out + 1] = r[5]
    end
  end

  for i = 1, np do
    local s = st[i]
    if dirty[i] or repair[i] == 'set' then
      local v, exp
      if s.k == 'f' then
        v, exp = fmt(s.count), s.exp
      elseif s.k == 's' then
        v, exp = fmt(s.index) .. ':' .. fmt(s.cur) .. ':' .. fmt(s.prev), (s.index + 2) * window[i]
      else
        v, exp = fmt(s.tat), cdiv(s.tat, 1000)
      end
      redis.call('SET', KEYS[base + i], v, 'PXAT', fmt(math.max(exp, 1)))
    elseif repair[i] == 'del' then
      redis.call('DEL', KEYS[base + i])
    elseif repair[i] then
      redis.call('PEXPIREAT', KEYS[base + i], fmt(math.max(proper[i], 1)))
    end
  end
end

local j, base = 3 * np + 3, 0
while j <= #ARGV do
  local n = tonumber(ARGV[j])
  client(base, j + 1, j + n)
  j = j + n + 1
  base = base + np
end
return out
