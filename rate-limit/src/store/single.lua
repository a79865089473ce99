-- Requests under one policy, each of one client, in one atomic step: the
-- transcription of rate-limit/src/window.rs's `check` for one policy (keep
-- the two in step; tests run both on the same sequences). Several policies
-- go through limits.lua; the fixed window on Redis' clock through
-- counter.lua, which sends a key here when it holds no count of its own.
-- KEYS: the key of each request's client (a key may come again: its
-- requests are evaluated in order, each as if alone). ARGV: now in µs (-1:
-- Redis' clock), the algorithm (0 fixed, 1 sliding, 2 GCRA), the limit, the
-- window in ms, then each request's cost.
-- Returns per request admitted (1/0), remaining, reset ms, retry ms (-1:
-- never), blocked ms (how long a request of cost 1 is sure to be rejected).
-- Values: the fixed window a bare count, its window's end the key's expiry
-- (as counter.lua, INCR + PEXPIRE writers and other languages expect; an
-- earlier version's "count:end" is read and rewritten so); the sliding
-- window "index:current:previous"; GCRA the TAT in µs. Every key written
-- expires when its state stops counting. A value this script cannot read
-- as its own is replaced (or deleted when nothing counts); an out-of-range
-- one (a count above the limit, a window in the future, a TAT past the
-- tolerance, an expiry past one window from now) is brought in range.
local MAX = 9007199254740992
local TAT_FLOOR = 1125899906842624
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

local kind, L, W = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now_us = tonumber(ARGV[1])
if now_us < 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now = idiv(now_us, 1000)

-- GCRA: one unit every `interval` µs, `L` of them at once (`tolerance`).
local interval = max(cdiv(W * 1000, L), 1)
local tolerance = L * interval

local function int(v)
  local n = tonumber(v)
  if n and n >= 0 and n < MAX and n == floor(n) then
    return n
  end
  return nil
end

-- A fixed-window count above the limit is a full window: the pipelined
-- counter (rate-limit/src/store/redis.rs) leaves rejected requests of cost 1
-- counted, and a higher limit's count is a full window of the lower one.
-- At or above 2^50 (TAT_FLOOR in window.rs) it is another algorithm's state
-- (a GCRA TAT in µs), left above the limit: replaced.
local function full(x)
  if x and x > L and x < TAT_FLOOR then
    return L
  end
  return x
end

-- One request of `cost` on `key`: one read, the arithmetic, one write, as
-- limits.lua does for each of its policies. Its answer goes to out[at + 1
-- .. at + 5].
local out = {}
local function request(key, cost, at)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    -- Another type (an error reply): nothing this script wrote.
    value = true
  end

  -- The stored state (a, b, c; a nil: none that counts) and what to write
  -- back: 'set' it, 'del' the key, or nil (only bring the expiry down to what
  -- the state needs).
  local a, b, c, act
  if value == true then
    act = 'del'
  elseif value then
    if kind == 0 then
      local x, y = match(value, '^(%d+):(%d+)$')
      if x then
        -- An earlier version's form: the window's end in the value.
        x, y, act = tonumber(x), tonumber(y), 'set'
        if x >= MAX or y >= MAX then x = nil end
        x = full(x)
      else
        x = full(int(value))
        if x and x <= L then
          y = redis.call('PEXPIRETIME', key)
          if y < 0 then
            y, act = now + W, 'set'
          end
        end
      end
      -- Still above the limit: another algorithm's state (see `full`).
      if not (x and y) or x > L then
        act = 'del'
      elseif y > now + W then
        -- A window ending past one window from now is counted in one from now.
        a, b, act = x, now + W, 'set'
      else
        a, b = x, y
      end
    elseif kind == 1 then
      local x, y, z = match(value, '^(%d+):(%d+):(%d+)$')
      x, y, z = int(x), int(y), int(z)
      if not (x and y and z) then
        act = 'del'
      else
        -- A window in the future (the clock stepped back) is the current one.
        local index = idiv(now, W)
        a, b, c = x, y, z
        if x > index or y > L or z > L then
          a, b, c, act = min(x, index), min(y, L), min(z, L), 'set'
        end
      end
    else
      local x = int(value)
      if not x then
        act = 'del'
      elseif x > now_us + tolerance then
        -- A TAT past a full bucket (the quota was lowered) is a full bucket.
        a, act = now_us + tolerance, 'set'
      else
        a = x
      end
    end
  end

  -- window.rs's `check`: admits, remaining, reset, retry, blocked, and the
  -- next state (x, y, z).
  local admits, remaining, reset, retry, blocked, x, y, z
  if kind == 0 then
    local count, exp = 0, now + W
    if a and b > now then
      count = a
      if b < exp then exp = b end
    end
    admits = cost <= L and count + cost <= L
    local after = count
    if admits then after = count + cost end
    local left = exp - now
    remaining, reset, retry, blocked = L - after, left, 0, 0
    if not admits then
      if cost > L then retry = -1 else retry = left end
    end
    if after >= L then blocked = left end
    x, y = after, exp
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
    admits = cost <= L and weighted + cur + cost <= L
    local after = cur
    if admits then after = cur + cost end
    -- The wait (ms) until a request of cost k passes.
    local function wait(k)
      if k > L then return -1 end
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
    remaining, reset, retry, blocked = max(L - (weighted + after), 0), W - elapsed, 0, wait(1)
    if not admits then retry = wait(cost) end
    x, y, z = index, after, prev
  else
    local iv, t = interval, tolerance
    local tat = min(max(a or 0, now_us), now_us + t)
    admits = cost <= L and tat + cost * iv - now_us <= t
    local after = tat
    if admits then after = tat + cost * iv end
    remaining, reset, retry = idiv(t - (after - now_us), iv), cdiv(after - now_us, 1000), 0
    blocked = cdiv(max(after + iv - now_us - t, 0), 1000)
    if not admits then
      if cost > L then retry = -1 else retry = cdiv(max(after + cost * iv - now_us - t, 0), 1000) end
    end
    x = after
  end
  if admits then
    a, b, c, act = x, y, z, 'set'
  end

  -- One write: the state, expiring when it stops counting; or the key's
  -- deletion; or its expiry brought down to what the state needs (a key left
  -- without one, or with one past it, gets it even when nothing changed).
  if act == 'del' and a == nil then
    redis.call('DEL', key)
  elseif a ~= nil then
    local v, exp
    if kind == 0 then
      v, exp = format('%d', a), b
    elseif kind == 1 then
      v, exp = format('%d:%d:%d', a, b, c), (a + 2) * W
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
  out[at + 1] = admits and 1 or 0
  out[at + 2], out[at + 3], out[at + 4], out[at + 5] = remaining, reset, retry, blocked
end

for i = 1, #KEYS do
  request(KEYS[i], tonumber(ARGV[4 + i]), 5 * (i - 1))
end
return out
