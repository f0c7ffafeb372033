'use strict';
// The addon built by `node-gyp rebuild` at install (see seek.c).
module.exports = require('./build/Release/seek.node');
