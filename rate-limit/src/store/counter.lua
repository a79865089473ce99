-- The fixed window of a layer with one policy, on Redis' clock: the
-- limiter's common case, at two commands (INCRBY, PTTL) in one atomic step,
-- no read of the time, no parsing. The value is a bare count and the
-- window's end is the key's expiry, as INCR + PEXPIRE writers (and
-- `Cache::incr_window`, and other languages) keep it.
-- KEYS[1]: the client's key. ARGV: the request's cost, the limit, the
-- window in ms.
-- Returns {admitted (1/0), the count after the request, ms until the window
-- ends}; or {-1}, changing nothing that counts, when the key holds no count
-- of this policy (not an integer: an earlier version's "count:end", another
-- algorithm's state, another type; negative; above the limit: a higher
-- limit's count, a TAT): single.lua then reads it and replaces it.
-- The arguments go to the commands as the strings they came as (a Lua
-- number would be formatted again, with '%.17g').
local key = KEYS[1]
local count = redis.pcall('INCRBY', key, ARGV[1])
local cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if type(count) ~= 'number' or count < cost or count - cost > limit then
  return {-1}
end
local left = redis.call('PTTL', key)
local fresh = left < 0
local window = tonumber(ARGV[3])
-- No expiry (a new key, or one left without) or one past a window from now
-- (a longer window's): the window ends one window from now.
if fresh or left > window then
  left = window
end
if count <= limit then
  if left == window then
    redis.call('PEXPIRE', key, ARGV[3])
  end
  return {1, count, left}
end
-- Rejected: charged nothing, in the same step, so no other request ever
-- sees it counted; a key this request made is removed.
count = count - cost
if count == 0 and fresh then
  redis.call('DEL', key)
else
  redis.call('DECRBY', key, ARGV[1])
  if left == window then
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
return {0, count, left}
